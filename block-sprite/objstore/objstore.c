/*
 * Sprite object store: dispatcher
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Everything that is the same for every backend lives here once: argument
 * and key checks, zero-length reads, the check that listings are sorted and
 * filtered as asked (a backend or server bug there would make garbage
 * collection delete live objects), and the store's name in front of every
 * error message.
 */

#include <errno.h>
#include <string.h>

#include "objstore/objstore-int.h"

int sprite_objstore_fail(GError **errp, int err, const char *fmt, ...)
{
    va_list ap;

    g_assert(err > 0);
    if (errp) {
        va_start(ap, fmt);
        g_propagate_error(errp, g_error_new_valist(SPRITE_ERROR, err, fmt,
                                                   ap));
        va_end(ap);
    }
    return -err;
}

static int objstore_prefix_error(SpriteObjstore *os, int ret, GError **errp)
{
    if (ret < 0 && errp && *errp) {
        g_prefix_error(errp, "%s: ", os->description);
    }
    return ret;
}

int sprite_objstore_check_key(const char *key, GError **errp)
{
    size_t len;
    const char *why = NULL;
    g_auto(GStrv) comps = NULL;

    if (!key || !*key) {
        return sprite_objstore_fail(errp, EINVAL, "empty object key");
    }
    len = strlen(key);
    if (!g_utf8_validate(key, len, NULL)) {
        g_autofree char *shown = g_utf8_make_valid(key, len);

        return sprite_objstore_fail(errp, EINVAL,
                                    "invalid object key '%s': not UTF-8",
                                    shown);
    }
    if (len > SPRITE_OBJSTORE_KEY_MAX) {
        why = "longer than 1024 bytes";
    }
    for (const char *p = key; *p && !why; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            why = "control character";
        }
    }
    if (!why) {
        comps = g_strsplit(key, "/", -1);
        for (int i = 0; comps[i] && !why; i++) {
            if (comps[i][0] == '\0') {
                why = "empty component (leading, trailing or double '/')";
            } else if (!strcmp(comps[i], ".") || !strcmp(comps[i], "..")) {
                why = "'.' or '..' component";
            } else if (g_str_has_prefix(comps[i],
                                        SPRITE_OBJSTORE_RESERVED_PREFIX)) {
                why = "component starting with the reserved prefix "
                      "'" SPRITE_OBJSTORE_RESERVED_PREFIX "'";
            }
        }
    }
    if (why) {
        g_autofree char *shown = g_strescape(key, NULL);

        return sprite_objstore_fail(errp, EINVAL,
                                    "invalid object key '%s': %s", shown,
                                    why);
    }
    return 0;
}

int sprite_objstore_open(const SpriteObjstoreConfig *cfg,
                         SpriteObjstore **out, GError **errp)
{
    int ret;

    *out = NULL;
    if (!cfg || !cfg->url) {
        return sprite_objstore_fail(errp, EINVAL,
                                    "no URL given for the object store");
    }
    if (cfg->url->scheme == SPRITE_SCHEME_FILE) {
        ret = sprite_file_open(cfg, out, errp);
    } else {
        if (!cfg->access_key_id != !cfg->secret_access_key) {
            return sprite_objstore_fail(errp, EINVAL,
                                        "an S3 access key ID and secret "
                                        "must be given together");
        }
        ret = sprite_s3_open(cfg, out, errp);
    }
    g_assert((ret == 0) == (*out != NULL));
    return ret;
}

void sprite_objstore_close(SpriteObjstore *os)
{
    char *description;

    if (!os) {
        return;
    }
    description = os->description;
    os->ops->close(os);
    g_free(description);
}

const char *sprite_objstore_describe(SpriteObjstore *os)
{
    return os->description;
}

int sprite_objstore_check(SpriteObjstore *os, GError **errp)
{
    return objstore_prefix_error(os, os->ops->check(os, errp), errp);
}

int sprite_objstore_get(SpriteObjstore *os, const char *key,
                        uint64_t offset, size_t len, void *buf,
                        size_t *got, GError **errp)
{
    int ret;

    *got = 0;
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    if (offset > UINT64_MAX - len) {
        return sprite_objstore_fail(errp, EINVAL,
                                    "read of object '%s' beyond 2^64", key);
    }
    if (len == 0) {
        /* No byte range can express it; still say whether @key exists. */
        ret = os->ops->head(os, key, NULL, NULL, errp);
    } else {
        ret = os->ops->get(os, key, offset, len, buf, got, errp);
        g_assert(ret < 0 || *got <= len);
    }
    return objstore_prefix_error(os, ret, errp);
}

int sprite_objstore_get_all(SpriteObjstore *os, const char *key,
                            GBytes **out, GError **errp)
{
    int ret;

    *out = NULL;
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    ret = os->ops->get_all(os, key, out, errp);
    g_assert((ret == 0) == (*out != NULL));
    return objstore_prefix_error(os, ret, errp);
}

int sprite_objstore_put(SpriteObjstore *os, const char *key,
                        const void *data, size_t len,
                        SpriteObjstorePutFlags flags, const char *if_match,
                        char **etag_out, GError **errp)
{
    int ret;

    if (etag_out) {
        *etag_out = NULL;
    }
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    if ((flags & SPRITE_PUT_IF_NONE_MATCH) && if_match) {
        return sprite_objstore_fail(errp, EINVAL,
                                    "put of '%s': If-None-Match and "
                                    "If-Match together", key);
    }
    if (if_match && (!*if_match || strchr(if_match, '"') ||
                     strpbrk(if_match, "\r\n"))) {
        return sprite_objstore_fail(errp, EINVAL,
                                    "put of '%s': malformed ETag", key);
    }
    ret = os->ops->put(os, key, data, len, flags, if_match, etag_out, errp);
    return objstore_prefix_error(os, ret, errp);
}

int sprite_objstore_head(SpriteObjstore *os, const char *key,
                         uint64_t *size, char **etag_out, GError **errp)
{
    int ret;

    if (etag_out) {
        *etag_out = NULL;
    }
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    ret = os->ops->head(os, key, size, etag_out, errp);
    return objstore_prefix_error(os, ret, errp);
}

int sprite_objstore_delete(SpriteObjstore *os, const char *key,
                           GError **errp)
{
    int ret;

    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    ret = os->ops->delete(os, key, errp);
    return objstore_prefix_error(os, ret, errp);
}

typedef struct ListCheck {
    const char *prefix;
    const char *start_after;
    char *last;                 /* last key passed on; owned */
    SpriteObjstoreListFn fn;
    void *opaque;
    int err;                    /* -EIO when the backend misbehaved */
    char *why;                  /* owned */
} ListCheck;

static int list_check_one(const char *key, uint64_t size, void *opaque)
{
    ListCheck *lc = opaque;
    const char *bound = lc->last ? lc->last : lc->start_after;

    if (!g_str_has_prefix(key, lc->prefix)) {
        lc->why = g_strdup_printf("listing returned '%s', which does not "
                                  "start with '%s'", key, lc->prefix);
    } else if (bound && strcmp(key, bound) <= 0) {
        lc->why = g_strdup_printf("listing is not in ascending order "
                                  "('%s' after '%s')", key, bound);
    }
    if (lc->why) {
        lc->err = -EIO;
        /* Any non-zero value stops the backend; we return lc->err. */
        return -EIO;
    }
    g_free(lc->last);
    lc->last = g_strdup(key);
    return lc->fn(key, size, lc->opaque);
}

int sprite_objstore_list(SpriteObjstore *os, const char *prefix,
                         const char *start_after, SpriteObjstoreListFn fn,
                         void *opaque, GError **errp)
{
    ListCheck lc = {
        .prefix = prefix ? prefix : "",
        .start_after = start_after && *start_after ? start_after : NULL,
        .fn = fn,
        .opaque = opaque,
    };
    int ret;

    ret = os->ops->list(os, lc.prefix, lc.start_after, list_check_one, &lc,
                        errp);
    if (lc.err) {
        g_clear_error(errp);
        ret = sprite_objstore_fail(errp, -lc.err, "%s", lc.why);
    }
    g_free(lc.last);
    g_free(lc.why);
    return objstore_prefix_error(os, ret, errp);
}
