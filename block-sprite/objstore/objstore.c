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
#include <limits.h>
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

/* Retries: exponential backoff with jitter within a time budget. */
typedef struct Backoff {
    gint64 deadline;            /* g_get_monotonic_time() */
    unsigned delay_ms;
    unsigned failures;          /* transient failures so far */
} Backoff;

#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 5000

static void backoff_init(SpriteObjstore *os, Backoff *b)
{
    b->deadline = os->retry_ms == UINT_MAX ? 0 :
                  g_get_monotonic_time() + (gint64)os->retry_ms * 1000;
    b->delay_ms = BACKOFF_FIRST_MS;
    b->failures = 0;
}

static bool transient(int ret)
{
    switch (-ret) {
    case EIO:           /* 5xx, throttling, a reply cut short */
    case ETIMEDOUT:
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EPIPE:
    case EAGAIN:
        return true;
    default:
        return false;
    }
}

/*
 * After a failed attempt that returned @ret: sleep and return true if it
 * is worth another one, else return false.  Clears *@err when retrying.
 */
static bool backoff_retry(Backoff *b, int ret, GError **err)
{
    gint64 now = g_get_monotonic_time();
    unsigned sleep_ms;

    if (!transient(ret) || now >= b->deadline) {
        return false;
    }
    b->failures++;
    sleep_ms = b->delay_ms / 2 + g_random_int_range(0, b->delay_ms / 2 + 1);
    sleep_ms = MIN((gint64)sleep_ms, (b->deadline - now) / 1000 + 1);
    g_usleep((gulong)sleep_ms * 1000);
    b->delay_ms = MIN(b->delay_ms * 2, BACKOFF_MAX_MS);
    g_clear_error(err);
    return true;
}

static int finish(SpriteObjstore *os, int ret, GError *local, GError **errp)
{
    if (ret < 0 && local) {
        g_prefix_error(&local, "%s: ", os->description);
        g_propagate_error(errp, local);
    } else if (local) {
        g_error_free(local);
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
    if (ret == 0) {
        (*out)->retry_ms = cfg->retry_ms ? cfg->retry_ms :
                           SPRITE_OBJSTORE_RETRY_DEFAULT_MS;
    }
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
    GError *local = NULL;
    Backoff b;
    int ret;

    /*
     * A server that answers 5xx is retried like every other request
     * (s3rver does under load); one that does not answer fails at once,
     * so that a wrong endpoint is reported without waiting.
     */
    backoff_init(os, &b);
    do {
        ret = os->ops->check(os, &local);
    } while (ret == -EIO && backoff_retry(&b, ret, &local));
    return finish(os, ret, local, errp);
}

int sprite_objstore_get(SpriteObjstore *os, const char *key,
                        uint64_t offset, size_t len, void *buf,
                        size_t *got, GError **errp)
{
    GError *local = NULL;
    Backoff b;
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
    backoff_init(os, &b);
    do {
        if (len == 0) {
            /* No byte range can express it; still say whether @key exists. */
            ret = os->ops->head(os, key, NULL, NULL, &local);
        } else {
            ret = os->ops->get(os, key, offset, len, buf, got, &local);
            g_assert(ret < 0 || *got <= len);
        }
    } while (ret < 0 && backoff_retry(&b, ret, &local));
    return finish(os, ret, local, errp);
}

int sprite_objstore_get_all(SpriteObjstore *os, const char *key,
                            GBytes **out, char **etag_out, GError **errp)
{
    GError *local = NULL;
    Backoff b;
    int ret;

    *out = NULL;
    if (etag_out) {
        *etag_out = NULL;
    }
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    backoff_init(os, &b);
    do {
        ret = os->ops->get_all(os, key, out, etag_out, &local);
        g_assert((ret == 0) == (*out != NULL));
    } while (ret < 0 && backoff_retry(&b, ret, &local));
    return finish(os, ret, local, errp);
}

/* Does @key hold exactly @data?  If so, also fetch its ETag. */
static bool same_content(SpriteObjstore *os, const char *key,
                         const void *data, size_t len, char **etag_out)
{
    g_autoptr(GBytes) cur = NULL;
    g_autofree char *etag = NULL;
    bool same;

    if (os->ops->get_all(os, key, &cur, etag_out ? &etag : NULL,
                         NULL) < 0) {
        return false;
    }
    same = g_bytes_get_size(cur) == len &&
           memcmp(g_bytes_get_data(cur, NULL), data, len) == 0;
    if (same && etag_out) {
        g_free(*etag_out);
        *etag_out = g_steal_pointer(&etag);
    }
    return same;
}

int sprite_objstore_put(SpriteObjstore *os, const char *key,
                        const void *data, size_t len,
                        SpriteObjstorePutFlags flags, const char *if_match,
                        char **etag_out, GError **errp)
{
    GError *local = NULL;
    Backoff b;
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
    backoff_init(os, &b);
    do {
        ret = os->ops->put(os, key, data, len, flags, if_match, etag_out,
                           &local);
    } while (ret < 0 && backoff_retry(&b, ret, &local));
    if (ret == -EEXIST && b.failures > 0 &&
        same_content(os, key, data, len, etag_out)) {
        /* An earlier attempt did it and only the reply was lost. */
        g_clear_error(&local);
        ret = 0;
    }
    return finish(os, ret, local, errp);
}

int sprite_objstore_head(SpriteObjstore *os, const char *key,
                         uint64_t *size, char **etag_out, GError **errp)
{
    GError *local = NULL;
    Backoff b;
    int ret;

    if (etag_out) {
        *etag_out = NULL;
    }
    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    backoff_init(os, &b);
    do {
        ret = os->ops->head(os, key, size, etag_out, &local);
    } while (ret < 0 && backoff_retry(&b, ret, &local));
    return finish(os, ret, local, errp);
}

int sprite_objstore_delete(SpriteObjstore *os, const char *key,
                           GError **errp)
{
    GError *local = NULL;
    Backoff b;
    int ret;

    ret = sprite_objstore_check_key(key, errp);
    if (ret < 0) {
        return ret;
    }
    backoff_init(os, &b);
    do {
        ret = os->ops->delete(os, key, &local);
    } while (ret < 0 && backoff_retry(&b, ret, &local));
    return finish(os, ret, local, errp);
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
    GError *local = NULL;
    Backoff b;
    int ret;

    backoff_init(os, &b);
    for (;;) {
        /* A retry goes on after the last key already passed on. */
        ret = os->ops->list(os, lc.prefix, lc.last ? lc.last : lc.start_after,
                            list_check_one, &lc, &local);
        if (lc.err) {
            g_clear_error(&local);
            ret = sprite_objstore_fail(&local, -lc.err, "%s", lc.why);
            break;
        }
        /* A non-zero return of @fn is the caller's, not a failure. */
        if (ret >= 0 || !local || !backoff_retry(&b, ret, &local)) {
            break;
        }
    }
    g_free(lc.last);
    g_free(lc.why);
    return finish(os, ret, local, errp);
}
