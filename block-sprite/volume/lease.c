/*
 * Sprite writer lease (see lease.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <unistd.h>

#include "volume/lease.h"

struct SpriteLease {
    SpriteObjstore *os;
    char *key;
    char *owner;
    uint64_t epoch;
    unsigned lease_ms;

    GMutex lock;
    GCond cond;
    /* Protected by @lock */
    char *etag;                 /* of our last write of the lease */
    bool lost;
    bool stopping;
    GThread *renewer;
};

static gint64 now_ms(void)
{
    return g_get_real_time() / 1000;
}

static char *lease_body(const char *owner, uint64_t epoch, gint64 expires)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();

    g_key_file_set_uint64(kf, "lease", "epoch", epoch);
    g_key_file_set_string(kf, "lease", "owner", owner);
    g_key_file_set_int64(kf, "lease", "expires", expires);
    return g_key_file_to_data(kf, NULL, NULL);
}

typedef struct Holder {
    uint64_t epoch;
    char *owner;
    gint64 expires;
} Holder;

static bool parse_holder(GBytes *obj, Holder *h)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    gsize len;
    const char *data = g_bytes_get_data(obj, &len);
    g_autoptr(GError) err = NULL;

    if (!g_key_file_load_from_data(kf, data, len, G_KEY_FILE_NONE, NULL)) {
        return false;
    }
    h->epoch = g_key_file_get_uint64(kf, "lease", "epoch", &err);
    if (err) {
        return false;
    }
    h->owner = g_key_file_get_string(kf, "lease", "owner", NULL);
    h->expires = g_key_file_get_int64(kf, "lease", "expires", NULL);
    return h->owner != NULL;
}

/* Write our lease, conditionally; on success update l->etag. */
static int put_lease(SpriteLease *l, SpriteObjstorePutFlags flags,
                     const char *if_match, gint64 expires, GError **errp)
{
    g_autofree char *body = lease_body(l->owner, l->epoch, expires);
    char *etag = NULL;
    int ret;

    ret = sprite_objstore_put(l->os, l->key, body, strlen(body), flags,
                              if_match, &etag, errp);
    if (ret == 0) {
        g_mutex_lock(&l->lock);
        g_free(l->etag);
        l->etag = etag;
        g_mutex_unlock(&l->lock);
    }
    return ret;
}

static gpointer renewer(gpointer opaque)
{
    SpriteLease *l = opaque;

    g_mutex_lock(&l->lock);
    while (!l->stopping && !l->lost) {
        gint64 until = g_get_monotonic_time() +
                       (gint64)l->lease_ms * 1000 / 3;
        g_autofree char *etag = NULL;
        int ret;

        if (g_cond_wait_until(&l->cond, &l->lock, until) || l->stopping) {
            continue;
        }
        etag = g_strdup(l->etag);
        g_mutex_unlock(&l->lock);
        ret = put_lease(l, SPRITE_PUT_DEFAULT, etag, now_ms() + l->lease_ms,
                        NULL);
        g_mutex_lock(&l->lock);
        if (ret == -EEXIST || ret == -ENOENT) {
            /* Somebody took it: every later flush of ours must fail. */
            l->lost = true;
        }
        /* Other failures: try again next round; the lease may expire. */
    }
    g_mutex_unlock(&l->lock);
    return NULL;
}

static void lease_free(SpriteLease *l)
{
    g_free(l->key);
    g_free(l->owner);
    g_free(l->etag);
    g_mutex_clear(&l->lock);
    g_cond_clear(&l->cond);
    g_free(l);
}

int sprite_lease_take(SpriteObjstore *os, const char *volume,
                      const char *url, unsigned lease_ms, bool takeover,
                      SpriteLease **out, SpriteLeaseInfo *info,
                      GError **errp)
{
    SpriteLease *l = g_new0(SpriteLease, 1);
    g_autoptr(GBytes) cur = NULL;
    g_autofree char *cur_etag = NULL;
    g_autofree char *body = NULL;
    Holder h = { 0 };
    int ret;

    g_mutex_init(&l->lock);
    g_cond_init(&l->cond);
    l->os = os;
    l->key = g_strdup_printf("%s/lease", volume);
    l->owner = g_strdup_printf("%s:%d:%08x", g_get_host_name(), (int)getpid(),
                               g_random_int());
    l->lease_ms = lease_ms;
    memset(info, 0, sizeof(*info));

    ret = sprite_objstore_get_all(os, l->key, &cur, &cur_etag, errp);
    if (ret == -ENOENT) {
        g_clear_error(errp);
        l->epoch = 1;
        ret = put_lease(l, SPRITE_PUT_IF_NONE_MATCH, NULL,
                        now_ms() + lease_ms, errp);
        if (ret == -EEXIST) {
            g_clear_error(errp);
            g_set_error(errp, SPRITE_ERROR, EBUSY, "volume '%s' was just "
                        "opened for writing by another writer", url);
            ret = -EBUSY;
        }
        if (ret < 0) {
            goto fail;
        }
    } else if (ret < 0) {
        goto fail;
    } else {
        /* The ETag is the GET's: a HEAD after it could see a newer lease. */
        if (!parse_holder(cur, &h)) {
            g_set_error(errp, SPRITE_ERROR, EIO, "volume '%s': its lease "
                        "object is unreadable", url);
            ret = -EIO;
            goto fail;
        }
        if (h.expires > now_ms() && !takeover) {
            g_autoptr(GDateTime) t =
                g_date_time_new_from_unix_utc(h.expires / 1000);
            g_autofree char *when = g_date_time_format(t, "%F %T UTC");

            g_set_error(errp, SPRITE_ERROR, EBUSY,
                        "volume '%s' is open for writing by %s (lease epoch "
                        "%" G_GUINT64_FORMAT ", valid until %s); if that "
                        "writer is gone, open with takeover=on", url,
                        h.owner, h.epoch, when);
            ret = -EBUSY;
            goto fail;
        }
        info->was_held = h.expires != 0;
        l->epoch = h.epoch + 1;
        ret = put_lease(l, SPRITE_PUT_DEFAULT, cur_etag, now_ms() + lease_ms,
                        errp);
        if (ret == -EEXIST) {
            g_clear_error(errp);
            g_set_error(errp, SPRITE_ERROR, EBUSY, "volume '%s': another "
                        "writer took its lease at the same time", url);
            ret = -EBUSY;
        }
        if (ret < 0) {
            goto fail;
        }
    }

    /* Probe: a server that honours If-None-Match refuses this. */
    body = lease_body(l->owner, l->epoch, now_ms() + lease_ms);
    ret = sprite_objstore_put(os, l->key, body, strlen(body),
                              SPRITE_PUT_IF_NONE_MATCH, NULL, NULL, NULL);
    info->fencing = ret == -EEXIST;
    if (ret == 0) {
        /* It was ignored and replaced the lease with the same holder. */
        g_free(l->etag);
        l->etag = NULL;
        sprite_objstore_head(os, l->key, NULL, &l->etag, NULL);
    }
    info->epoch = l->epoch;

    l->renewer = g_thread_new("sprite-lease", renewer, l);
    g_free(h.owner);
    *out = l;
    return 0;

fail:
    g_free(h.owner);
    lease_free(l);
    return ret;
}

bool sprite_lease_lost(SpriteLease *l)
{
    bool lost;

    g_mutex_lock(&l->lock);
    lost = l->lost;
    g_mutex_unlock(&l->lock);
    return lost;
}

void sprite_lease_release(SpriteLease *l)
{
    g_autofree char *etag = NULL;
    bool lost;

    if (!l) {
        return;
    }
    g_mutex_lock(&l->lock);
    l->stopping = true;
    g_cond_signal(&l->cond);
    g_mutex_unlock(&l->lock);
    g_thread_join(l->renewer);

    g_mutex_lock(&l->lock);
    lost = l->lost;
    etag = g_strdup(l->etag);
    g_mutex_unlock(&l->lock);
    if (!lost && etag) {
        /* Released: the next writer need not fence us off. */
        put_lease(l, SPRITE_PUT_DEFAULT, etag, 0, NULL);
    }
    lease_free(l);
}
