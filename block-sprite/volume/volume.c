/*
 * Sprite volume: composes object store, segment cache and metadata
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Data path.  A write is appended to the pending log (a file in the
 * volume's cache directory) and mapped in the pending overlay; it is
 * acknowledged then.  A flush seals the pending log into one segment
 * object in memory (header + data, see store/segment.h) and starts a new
 * log, PUTs the segment with If-None-Match without holding the volume
 * lock, and only after the PUT succeeded applies its records to the
 * durable extent map and the SQLite database (I3).  Reads look in the
 * pending overlay, the sealed segment, the durable map, then the base
 * volume; what none maps reads as zeroes.  Extents name the segment that
 * holds their data by its sequence number, the pending log included: it
 * will become segment pending_seq().
 *
 * Checkpoints.  A checkpoint is a record in the pending log, like a
 * write, and a copy of the extent map as the volume reads then.  Going to
 * one is a record too, and makes the pending overlay that copy, marked
 * opaque: reads no longer look below it.  The VM state (savevm's stream)
 * is written to an area above the disk (SPRITE_VMSTATE_BASE) and so
 * travels with the extent map into the checkpoint.
 *
 * Shipping.  A writer has a shipper thread that uploads the pending log
 * in the background when it grows past PENDING_MAX and after a
 * checkpoint.  A flush waits for the upload of whatever changed the disk;
 * VM state and checkpoint records alone are left to the shipper, so that
 * a checkpoint costs no upload in the VM's path.
 *
 * Metadata.  Every SNAPSHOT_EVERY segments, and at close, a copy of the
 * database is uploaded as a metadata snapshot, so that opening on a host
 * with an empty cache costs one snapshot plus the segments after it.  The
 * shipper uploads it after the flush that made it due, which does not
 * wait for it.
 *
 * Locking.  @flush_lock serialises flushes; @lock protects the maps and
 * logs and is held neither across a network request (a read of a durable
 * segment drops it) nor while a guest write copies its bytes into the
 * log: it takes room in the log with the lock, writes without it, and
 * maps the bytes with it again; sealing waits for such writes.  Order:
 * @flush_lock, then @lock, then a base volume's @lock (reads of a clone
 * take the base's lock with their own held).  The try_ calls, for QEMU's
 * event loop, only try @lock: a read or write that would wait goes to a
 * thread instead, and a write whose bytes are in the log when the lock is
 * busy for their mapping is ended by trying again later
 * (sprite_volume_try_write_end()); seals wait for it meanwhile.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "volume/volume-int.h"

/* Pending bytes that wake the shipper to upload without a flush... */
#define PENDING_MAX (32u << 20)
/* ...and that make writers upload themselves, when it falls behind. */
#define PENDING_HARD (1ULL << 30)
/*
 * The pending log keeps its data after this many bytes, where the
 * segment header goes when it is sealed, so that the log file is the
 * segment object (mapped, not copied) unless the header is larger.
 */
#define PEND_RESERVE (1u << 20)
/* The cache adopts sealed logs with this much data or more. */
#define ADOPT_MIN (8u << 20)
/*
 * A log file kept for the next seal is emptied only if it is larger than
 * this: rewriting pages it has costs less than cutting them off and
 * allocating them again (truncating, then faulting the header's page in:
 * 0.4 ms of each small flush on ext4).  Its stale bytes past the data
 * are never read.
 */
#define LOG_KEEP (PEND_RESERVE + ADOPT_MIN)
/* How long the shipper waits before it tries a failed upload again. */
#define SHIP_RETRY_US (5 * G_USEC_PER_SEC)
/* Upload a metadata snapshot after this many segments. */
#define SNAPSHOT_EVERY 64
/* How often the shipper collects garbage. */
#define GC_INTERVAL_US (60 * G_USEC_PER_SEC)
/* How long a writer's lease lasts without renewal. */
#define LEASE_MS 30000
/*
 * Looks a read-only open takes at metadata that seems damaged before it
 * calls it damage, and the pause between them (see volume_open()).
 */
#define RO_RELOADS 5
#define RO_RELOAD_US (100 * 1000)

G_STATIC_ASSERT(SPRITE_VMSTATE_SIZE == SPRITE_VMSTATE_LIMIT);

/* The sequence number the pending log will have as a segment. */
static uint64_t pending_seq(SpriteVolume *v)
{
    return v->sealed ? v->sealed->h->seq + 1 : v->seq + 1;
}

static void ckpt_free(gpointer p)
{
    Ckpt *c = p;

    g_free(c->pub.name);
    sprite_extmap_free(c->map);
    g_free(c);
}

/* The description stored with a checkpoint record. */
static char *ckpt_encode(const Ckpt *c)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();

    g_key_file_set_string(kf, "checkpoint", "name", c->pub.name);
    g_key_file_set_uint64(kf, "checkpoint", "size", c->pub.size);
    g_key_file_set_uint64(kf, "checkpoint", "vm-state-size",
                          c->pub.vm_state_size);
    g_key_file_set_int64(kf, "checkpoint", "date-sec", c->pub.date_sec);
    g_key_file_set_int64(kf, "checkpoint", "date-nsec", c->pub.date_nsec);
    g_key_file_set_int64(kf, "checkpoint", "vm-clock-nsec",
                         c->pub.vm_clock_nsec);
    g_key_file_set_int64(kf, "checkpoint", "icount", c->pub.icount);
    g_key_file_set_uint64(kf, "checkpoint", "written", c->written);
    return g_key_file_to_data(kf, NULL, NULL);
}

static Ckpt *ckpt_decode(uint64_t id, uint64_t seq, const char *text,
                         size_t len, GError **errp)
{
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) local = NULL;
    Ckpt *c;

    if (!g_key_file_load_from_data(kf, text, len, G_KEY_FILE_NONE, &local) ||
        !g_key_file_has_key(kf, "checkpoint", "size", NULL)) {
        g_set_error(errp, SPRITE_ERROR, EIO, "checkpoint %" G_GUINT64_FORMAT
                    " has an unreadable description", id);
        return NULL;
    }
    c = g_new0(Ckpt, 1);
    c->pub.id = id;
    c->seq = seq;
    c->pub.name = g_key_file_get_string(kf, "checkpoint", "name", NULL);
    c->pub.size = g_key_file_get_uint64(kf, "checkpoint", "size", NULL);
    c->pub.vm_state_size = g_key_file_get_uint64(kf, "checkpoint",
                                                 "vm-state-size", NULL);
    c->pub.date_sec = g_key_file_get_int64(kf, "checkpoint", "date-sec",
                                           NULL);
    c->pub.date_nsec = g_key_file_get_int64(kf, "checkpoint", "date-nsec",
                                            NULL);
    c->pub.vm_clock_nsec = g_key_file_get_int64(kf, "checkpoint",
                                                "vm-clock-nsec", NULL);
    c->pub.icount = g_key_file_get_int64(kf, "checkpoint", "icount", NULL);
    c->written = g_key_file_get_uint64(kf, "checkpoint", "written", NULL);
    if (!c->pub.name || !*c->pub.name || c->pub.size == 0 ||
        c->pub.size % SPRITE_SECTOR_SIZE ||
        c->pub.vm_state_size > SPRITE_VMSTATE_SIZE) {
        ckpt_free(c);
        g_set_error(errp, SPRITE_ERROR, EIO, "checkpoint %" G_GUINT64_FORMAT
                    " has an invalid description", id);
        return NULL;
    }
    return c;
}

/* The checkpoint with ID @id, or with name @name (either may be NULL);
 * with both, one that has both.  Called with @lock or @ckpt_lock held. */
static Ckpt *find_ckpt(SpriteVolume *v, const char *id, const char *name)
{
    guint64 want = 0;
    guint i;

    /* IDs are decimal numbers; any other string names no checkpoint. */
    if (id && !g_ascii_string_to_unsigned(id, 10, 1, G_MAXUINT64, &want,
                                          NULL)) {
        return NULL;
    }
    for (i = 0; i < v->ckpts->len; i++) {
        Ckpt *c = g_ptr_array_index(v->ckpts, i);

        if ((!id || c->pub.id == want) &&
            (!name || g_str_equal(name, c->pub.name))) {
            return c;
        }
    }
    return NULL;
}

/* The checkpoint whose ID, else name, is @id_or_name (as qcow2 does). */
static Ckpt *find_ckpt_by_id_or_name(SpriteVolume *v, const char *id_or_name)
{
    Ckpt *c = find_ckpt(v, id_or_name, NULL);

    return c ? c : find_ckpt(v, NULL, id_or_name);
}

static void sealed_free(Sealed *sl)
{
    if (sl) {
        struct stat st;

        sprite_seg_header_free(sl->h);
        sprite_extmap_free(sl->map);
        /* The log file (unless the cache took it) is free for the next
         * seal; a large one is emptied. */
        if (sl->fd >= 0 && (fstat(sl->fd, &st) < 0 || st.st_size > LOG_KEEP) &&
            ftruncate(sl->fd, 0) < 0) {
            /* harmless: it only takes room in the cache directory */
        }
        if (sl->mapped) {
            munmap(sl->obj, sl->len);
        } else {
            g_free(sl->obj);
        }
        g_free(sl);
    }
}

/* Read exactly @len bytes at @off of @fd. */
static int pread_full(int fd, void *buf, uint64_t len, uint64_t off)
{
    uint64_t done = 0;

    while (done < len) {
        ssize_t k = pread(fd, (uint8_t *)buf + done, len - done, off + done);

        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return k < 0 ? -errno : -EIO;
        }
        done += k;
    }
    return 0;
}

static int errno_error(GError **errp, int err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static int errno_error(GError **errp, int err, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(errp, SPRITE_ERROR, err, "%s: %s", msg, g_strerror(err));
    return -err;
}

static SpriteObjstore *open_store(const SpriteVolumeOptions *o,
                                  const SpriteUrl *u, GError **errp)
{
    SpriteObjstoreConfig cfg = {
        .url = u,
        .access_key_id = o->access_key_id,
        .secret_access_key = o->secret_access_key,
        .region = o->region,
        .sslverify = !o->no_sslverify,
        .cafile = o->cafile,
        .retry_ms = o->retry_ms,
    };
    SpriteObjstore *os;

    if (sprite_objstore_open(&cfg, &os, errp) < 0) {
        return NULL;
    }
    if (sprite_objstore_check(os, errp) < 0) {
        sprite_objstore_close(os);
        return NULL;
    }
    return os;
}

/* ------------------------------------------------------------------ */
/* Descriptor */

typedef struct Descriptor {
    char *uuid;
    uint64_t size;
    char *base;
    uint64_t base_seq;
    uint64_t base_ckpt;
} Descriptor;

static void descriptor_clear(Descriptor *d)
{
    g_free(d->uuid);
    g_free(d->base);
}

static int read_descriptor(SpriteObjstore *os, const SpriteUrl *u,
                           Descriptor *d, GError **errp)
{
    g_autofree char *key = sprite_key_descriptor(u->volume);
    g_autofree char *body = NULL;
    g_autoptr(GBytes) obj = NULL;
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GError) local = NULL;
    g_autofree char *url = sprite_url_to_string(u);
    int ret;

    ret = sprite_objstore_get_all(os, key, &obj, NULL, errp);
    if (ret == -ENOENT) {
        g_clear_error(errp);
        g_set_error(errp, SPRITE_ERROR, ENOENT,
                    "volume '%s' does not exist on %s", url,
                    sprite_objstore_describe(os));
        return ret;
    }
    if (ret < 0) {
        return ret;
    }
    ret = sprite_desc_decode(obj, &body, errp);
    if (ret < 0) {
        g_prefix_error(errp, "volume '%s': ", url);
        return ret;
    }
    if (!g_key_file_load_from_data(kf, body, -1, G_KEY_FILE_NONE, &local)) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "volume '%s': unreadable descriptor: %s", url,
                    local->message);
        return -EIO;
    }
    d->uuid = g_key_file_get_string(kf, "volume", "uuid", NULL);
    d->size = g_key_file_get_uint64(kf, "volume", "size", NULL);
    d->base = g_key_file_get_string(kf, "volume", "base", NULL);
    d->base_seq = g_key_file_get_uint64(kf, "volume", "base-seq", NULL);
    d->base_ckpt = g_key_file_get_uint64(kf, "volume", "base-checkpoint",
                                         NULL);
    if (!d->uuid || d->size == 0 || d->size % SPRITE_SECTOR_SIZE) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "volume '%s': invalid descriptor", url);
        descriptor_clear(d);
        return -EIO;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Cache directory and metadata */

static char *default_cache_root(void)
{
    return g_build_filename(g_get_user_cache_dir(), "sprite", NULL);
}

/*
 * The cache directory of a volume is keyed by its URL (and, for a base,
 * the segment it is pinned to), so that volumes never share one.
 */
static char *volume_cache_dir(const char *root, const char *url,
                              const char *volume, uint64_t pin)
{
    g_autofree char *id = g_strdup_printf("%s@%" G_GUINT64_FORMAT, url, pin);
    g_autofree char *hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256,
                                                          id, -1);
    g_autofree char *leaf = g_strdup_printf("%.16s-%s", hash, volume);

    return g_build_filename(root, leaf, NULL);
}

static void remove_tree(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(path, name, NULL);

        if (g_file_test(p, G_FILE_TEST_IS_DIR) &&
            !g_file_test(p, G_FILE_TEST_IS_SYMLINK)) {
            remove_tree(p);
        } else {
            unlink(p);
        }
    }
    if (d) {
        g_dir_close(d);
    }
    rmdir(path);
}

/*
 * Take the cache directory for this process.  A writer must have it; a
 * reader that finds it taken by another process works in a private
 * temporary directory instead.
 */
static int lock_cache_dir(SpriteVolume *v, GError **errp)
{
    g_autofree char *lock = NULL;

    if (g_mkdir_with_parents(v->dir, 0700) < 0) {
        return errno_error(errp, errno, "cannot create cache directory %s",
                           v->dir);
    }
    lock = g_build_filename(v->dir, "lock", NULL);
    v->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (v->lock_fd < 0) {
        return errno_error(errp, errno, "cannot open %s", lock);
    }
    if (flock(v->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        return 0;
    }
    close(v->lock_fd);
    v->lock_fd = -1;
    if (!v->read_only) {
        g_set_error(errp, SPRITE_ERROR, EBUSY,
                    "volume '%s' is already open for writing by another "
                    "process using cache directory %s", v->url_str, v->dir);
        return -EBUSY;
    }
    g_free(v->dir);
    v->dir = g_dir_make_tmp("sprite-ro-XXXXXX", NULL);
    if (!v->dir) {
        return errno_error(errp, errno, "cannot create a temporary cache "
                           "directory");
    }
    v->private_dir = true;
    return 0;
}

/* The path of log file @i (0 or 1). */
static char *log_path(SpriteVolume *v, int i)
{
    g_autofree char *name = g_strdup_printf("log.%d", i);

    return g_build_filename(v->dir, name, NULL);
}

/*
 * Create (or empty: what a previous life left was never acknowledged as
 * durable) the two log files; the first takes writes.
 */
static int open_logs(SpriteVolume *v, GError **errp)
{
    int i;

    for (i = 0; i < 2; i++) {
        g_autofree char *path = log_path(v, i);

        v->log_fd[i] = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
                            0600);
        if (v->log_fd[i] < 0) {
            return errno_error(errp, errno, "cannot create %s", path);
        }
    }
    v->pend_fd = v->log_fd[0];
    return 0;
}

static char *meta_path(SpriteVolume *v)
{
    return g_build_filename(v->dir, "meta.db", NULL);
}

static void remove_meta(SpriteVolume *v)
{
    g_autofree char *p = meta_path(v);
    g_autofree char *wal = g_strdup_printf("%s-wal", p);
    g_autofree char *shm = g_strdup_printf("%s-shm", p);

    unlink(p);
    unlink(wal);
    unlink(shm);
}

typedef struct NewestSnap {
    uint64_t pin;
    uint64_t best;
} NewestSnap;

static int newest_snap_cb(const char *key, uint64_t size, void *opaque)
{
    NewestSnap *n = opaque;
    uint64_t seq;

    if (sprite_key_parse_seq(key, &seq) && seq <= n->pin && seq > n->best) {
        n->best = seq;
    }
    return 0;
}

/*
 * Replace the local database with the newest metadata snapshot on the
 * store that is not after our pin (or an empty one without snapshots).
 */
static int restore_meta(SpriteVolume *v, const Descriptor *d, GError **errp)
{
    g_autofree char *prefix = g_strdup_printf("%s/meta/", v->url->volume);
    g_autofree char *path = meta_path(v);
    NewestSnap n = { .pin = v->pin_seq ? v->pin_seq : UINT64_MAX };
    int ret;

    sprite_meta_close(v->meta);
    v->meta = NULL;
    remove_meta(v);
    sprite_segcache_drop_all(v->cache);

    ret = sprite_objstore_list(v->os, prefix, NULL, newest_snap_cb, &n, errp);
    if (ret < 0) {
        return ret;
    }
    if (n.best) {
        g_autofree char *key = sprite_key_snapshot(v->url->volume, n.best);
        g_autoptr(GBytes) obj = NULL;
        g_autoptr(GError) local = NULL;
        const void *db;
        size_t len;
        uint64_t seq;

        ret = sprite_objstore_get_all(v->os, key, &obj, NULL, errp);
        if (ret < 0) {
            return ret;
        }
        ret = sprite_snap_decode(obj, &seq, &db, &len, errp);
        if (ret == 0 && seq != n.best) {
            g_set_error(errp, SPRITE_ERROR, EIO, "metadata snapshot %s "
                        "claims segment %" G_GUINT64_FORMAT, key, seq);
            ret = -EIO;
        }
        if (ret < 0) {
            g_prefix_error(errp, "volume '%s': ", v->url_str);
            return ret;
        }
        if (!g_file_set_contents(path, db, len, &local)) {
            g_set_error(errp, SPRITE_ERROR, EIO, "cannot write %s: %s",
                        path, local->message);
            return -EIO;
        }
    }
    ret = sprite_meta_open(path, &v->meta, errp);
    if (ret < 0) {
        return ret;
    }
    if (!n.best) {
        if ((ret = sprite_meta_set(v->meta, SPRITE_META_UUID, d->uuid,
                                   errp)) < 0 ||
            (ret = sprite_meta_set_u64(v->meta, SPRITE_META_SIZE, d->size,
                                       errp)) < 0 ||
            (ret = sprite_meta_set_u64(v->meta, SPRITE_META_SEQ, 0,
                                       errp)) < 0) {
            return ret;
        }
    }
    v->snap_seq = n.best;
    return 0;
}

/* Bytes of the disk (not the VM state area) that @map maps to data. */
static uint64_t disk_data_bytes(SpriteExtmap *map)
{
    return sprite_extmap_bytes(map, SPRITE_EXT_DATA) -
           sprite_extmap_bytes_from(map, SPRITE_VMSTATE_BASE, SPRITE_EXT_DATA);
}

static int vm_index_save(SpriteVolume *v, GError **errp);

/* Apply checkpoint record @r of segment @h to the database. */
static int apply_checkpoint(SpriteVolume *v, const SpriteSegHeader *h,
                            const SpriteRecord *r, GError **errp)
{
    g_autofree char *text = NULL;
    Ckpt *c;
    int ret;

    switch (r->kind) {
    case SPRITE_REC_CHECKPOINT:
        text = g_malloc(r->length + 1);
        ret = sprite_segcache_read(v->cache, h->seq, r->data_off, r->length,
                                   text, errp);
        if (ret < 0) {
            return ret;
        }
        text[r->length] = 0;
        c = ckpt_decode(r->offset, h->seq, text, r->length, errp);
        if (!c) {
            return -EIO;
        }
        ckpt_free(c);
        ret = sprite_meta_add_checkpoint(v->meta, r->offset, h->seq, text,
                                         errp);
        if (ret == 0 && v->vm_unsaved && v->vm_unsaved_id == r->offset) {
            ret = vm_index_save(v, errp);
        }
        return ret;
    case SPRITE_REC_GOTO:
        ret = sprite_meta_goto_checkpoint(v->meta, r->offset, errp);
        if (ret == 0) {
            sprite_extmap_clear(v->map);
            ret = sprite_meta_load_extents(v->meta, v->map, errp);
        }
        return ret;
    case SPRITE_REC_DELETE:
        return sprite_meta_delete_checkpoint(v->meta, r->offset, errp);
    }
    g_assert_not_reached();
}

/* Apply the records of segment @h to the durable map and database. */
static int apply_segment(SpriteVolume *v, const SpriteSegHeader *h,
                         GError **errp)
{
    uint64_t written = v->written + h->data_len;
    uint32_t i;
    int ret;

    ret = sprite_meta_begin(v->meta, errp);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < h->nrecords; i++) {
        const SpriteRecord *r = &h->records[i];
        bool data = r->kind == SPRITE_REC_DATA || r->kind == SPRITE_REC_REF;
        SpriteExtent e = {
            .start = r->offset,
            .len = r->length,
            .seg = h->seq - r->back,
            .data_off = r->data_off,
            .kind = data ? SPRITE_EXT_DATA :
                    v->base ? SPRITE_EXT_ZERO : SPRITE_EXT_NONE,
        };
        uint64_t lo, hi;

        if (!data && r->kind != SPRITE_REC_ZERO) {
            ret = apply_checkpoint(v, h, r, errp);
            if (ret < 0) {
                g_prefix_error(errp, "volume '%s': segment %016"
                               G_GINT64_MODIFIER "x: ", v->url_str, h->seq);
                goto fail;
            }
            continue;
        }
        sprite_extmap_set(v->map, &e, &lo, &hi);
        ret = sprite_meta_store_window(v->meta, v->map, lo, hi, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    if ((ret = sprite_meta_add_segment(v->meta, h->seq, h->header_len,
                                       h->data_len, errp)) < 0 ||
        (ret = sprite_meta_set_u64(v->meta, SPRITE_META_SEQ, h->seq,
                                   errp)) < 0 ||
        (ret = sprite_meta_set_u64(v->meta, SPRITE_META_SIZE,
                                   h->volume_size, errp)) < 0 ||
        (ret = sprite_meta_set_u64(v->meta, SPRITE_META_WRITTEN, written,
                                   errp)) < 0 ||
        (ret = sprite_meta_commit(v->meta, errp)) < 0) {
        goto fail;
    }
    v->written = written;
    __atomic_store_n(&v->seq, h->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&v->size, h->volume_size, __ATOMIC_RELAXED);
    __atomic_store_n(&v->data_bytes, disk_data_bytes(v->map),
                     __ATOMIC_RELAXED);
    __atomic_add_fetch(&v->store_bytes, h->header_len + h->data_len,
                       __ATOMIC_RELAXED);
    return 0;

fail:
    /* The map is ahead of the database now: the caller reloads both. */
    sprite_meta_rollback(v->meta);
    return ret;
}

typedef struct ListedSeg {
    uint64_t seq;
    uint64_t size;              /* of the object, as listed */
} ListedSeg;

/* Collect the segments listed into @opaque, a GArray of ListedSeg. */
static int roll_list_cb(const char *key, uint64_t size, void *opaque)
{
    ListedSeg l = { .size = size };

    if (sprite_key_parse_seq(key, &l.seq)) {
        g_array_append_val((GArray *)opaque, l);
    }
    return 0;
}

/*
 * Apply the segments on the store after v->seq (up to the pin).  Sets
 * *@gap when one is missing.
 */
static int roll_forward(SpriteVolume *v, bool *gap, GError **errp)
{
    g_autofree char *prefix = g_strdup_printf("%s/seg/", v->url->volume);
    g_autofree char *after = sprite_key_segment(v->url->volume, v->seq);
    g_autoptr(GArray) seqs = g_array_new(FALSE, FALSE, sizeof(ListedSeg));
    guint i;
    int ret;

    *gap = false;
    ret = sprite_objstore_list(v->os, prefix, v->seq ? after : NULL,
                               roll_list_cb, seqs, errp);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < seqs->len; i++) {
        uint64_t seq = g_array_index(seqs, ListedSeg, i).seq;
        uint64_t size = g_array_index(seqs, ListedSeg, i).size;
        const SpriteSegHeader *h;

        if (v->pin_seq && seq > v->pin_seq) {
            break;
        }
        if (seq != v->seq + 1) {
            *gap = true;
            g_set_error(errp, SPRITE_ERROR, EIO,
                        "volume '%s': segment %016" G_GINT64_MODIFIER "x "
                        "follows %016" G_GINT64_MODIFIER "x: segments are "
                        "missing from the object store", v->url_str, seq,
                        v->seq);
            return -EIO;
        }
        ret = sprite_segcache_header(v->cache, seq, &h, errp);
        if (ret < 0) {
            return ret;
        }
        if (size < h->header_len + h->data_len) {
            g_set_error(errp, SPRITE_ERROR, EIO, "volume '%s': segment %016"
                        G_GINT64_MODIFIER "x is %" G_GUINT64_FORMAT " bytes, "
                        "not %" G_GUINT64_FORMAT " (truncated, or still "
                        "being written)", v->url_str, seq, size,
                        h->header_len + h->data_len);
            return -EIO;
        }
        ret = apply_segment(v, h, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (v->pin_seq && v->seq != v->pin_seq) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "base volume '%s' lacks segment %016" G_GINT64_MODIFIER
                    "x that its clones depend on", v->url_str, v->pin_seq);
        return -EIO;
    }
    return 0;
}

/* Is the local database a faithful prefix of what the store holds? */
static int local_meta_usable(SpriteVolume *v, const Descriptor *d,
                             bool *usable, GError **errp)
{
    g_autofree char *uuid = NULL;
    g_autofree char *key = NULL;
    uint64_t seq, size;
    int ret;

    *usable = false;
    if (sprite_meta_get(v->meta, SPRITE_META_UUID, &uuid, NULL) < 0 ||
        g_strcmp0(uuid, d->uuid) != 0 ||
        sprite_meta_get_u64(v->meta, SPRITE_META_SEQ, &seq, NULL) < 0 ||
        sprite_meta_get_u64(v->meta, SPRITE_META_SIZE, &size, NULL) < 0 ||
        (v->pin_seq && seq > v->pin_seq)) {
        return 0;
    }
    if (seq > 0) {
        /* A store that was reset under us no longer has our segment. */
        key = sprite_key_segment(v->url->volume, seq);
        ret = sprite_objstore_head(v->os, key, NULL, NULL, errp);
        if (ret == -ENOENT) {
            g_clear_error(errp);
            return 0;
        }
        if (ret < 0) {
            return ret;
        }
    }
    v->seq = seq;
    v->size = size;
    *usable = true;
    return 0;
}

typedef struct LoadCkptCtx {
    SpriteVolume *v;
    GError *err;
} LoadCkptCtx;

static void load_ckpt_cb(uint64_t id, uint64_t seq, const char *info,
                         void *opaque)
{
    LoadCkptCtx *l = opaque;
    Ckpt *c;

    if (l->err) {
        return;
    }
    c = ckpt_decode(id, seq, info, strlen(info), &l->err);
    if (c) {
        g_ptr_array_add(l->v->ckpts, c);
    }
}

/* Fill v->ckpts from the database. */
static int load_checkpoints(SpriteVolume *v, GError **errp)
{
    LoadCkptCtx l = { .v = v };
    guint i;
    int ret;

    g_ptr_array_set_size(v->ckpts, 0);
    ret = sprite_meta_foreach_checkpoint(v->meta, load_ckpt_cb, &l, errp);
    if (ret == 0 && l.err) {
        g_propagate_prefixed_error(errp, l.err, "volume '%s': ", v->url_str);
        ret = -EIO;
    }
    for (i = 0; ret == 0 && i < v->ckpts->len; i++) {
        Ckpt *c = g_ptr_array_index(v->ckpts, i);
        g_autoptr(GArray) units = g_array_new(FALSE, FALSE,
                                              sizeof(uint64_t));

        /* A hint: one that cannot be read is none. */
        if (sprite_meta_get_restore_set(v->meta, c->pub.id, units,
                                        NULL) == 0) {
            c->restore_units = units->len;
        }
    }
    return ret;
}

static int load_metadata(SpriteVolume *v, const Descriptor *d, bool local,
                         GError **errp);

/* load_metadata() again, after an attempt that failed with *@errp. */
static int reload_metadata(SpriteVolume *v, const Descriptor *d,
                           bool local, GError **errp)
{
    g_clear_error(errp);
    sprite_extmap_clear(v->map);
    sprite_meta_close(v->meta);
    v->meta = NULL;
    return load_metadata(v, d, local, errp);
}

/*
 * Load the volume's metadata: the local database rolled forward if it is
 * usable, else the newest metadata snapshot on the store rolled forward.
 * @local is false to ignore the local database.
 */
static int load_metadata(SpriteVolume *v, const Descriptor *d, bool local,
                         GError **errp)
{
    g_autofree char *path = meta_path(v);
    bool usable = false;
    bool gap;
    int ret;

    if (local && sprite_meta_open(path, &v->meta, NULL) == 0) {
        ret = local_meta_usable(v, d, &usable, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (usable) {
        ret = sprite_meta_load_extents(v->meta, v->map, NULL);
        usable = ret == 0;
        sprite_meta_get_u64(v->meta, "snap-seq", &v->snap_seq, NULL);
    }
    if (!usable) {
        sprite_extmap_clear(v->map);
        ret = restore_meta(v, d, errp);
        if (ret < 0) {
            return ret;
        }
        ret = sprite_meta_get_u64(v->meta, SPRITE_META_SEQ, &v->seq, errp);
        if (ret == 0) {
            ret = sprite_meta_get_u64(v->meta, SPRITE_META_SIZE, &v->size,
                                      errp);
        }
        if (ret == 0) {
            ret = sprite_meta_load_extents(v->meta, v->map, errp);
        }
        if (ret < 0) {
            g_prefix_error(errp, "volume '%s': ", v->url_str);
            return ret;
        }
    }
    ret = sprite_meta_segment_bytes(v->meta, &v->store_bytes, errp);
    if (ret < 0) {
        return ret;
    }
    v->written = 0;
    sprite_meta_get_u64(v->meta, SPRITE_META_WRITTEN, &v->written, NULL);
    v->data_bytes = disk_data_bytes(v->map);
    ret = roll_forward(v, &gap, errp);
    if (ret < 0 && gap && usable) {
        /*
         * The garbage collector deleted segments after our database that
         * a newer snapshot made unnecessary: start from that snapshot.
         */
        return reload_metadata(v, d, false, errp);
    }
    if (ret == 0) {
        ret = load_checkpoints(v, errp);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Open, close, create */

static int flush_volume(SpriteVolume *v, GError **errp);
static int upload_snapshot(SpriteVolume *v, GError **errp);
static void request_snapshot(SpriteVolume *v);

/* Wake the shipper.  Called with v->lock held. */
static void kick_shipper(SpriteVolume *v)
{
    v->ship_wanted = true;
    g_cond_signal(&v->ship_cond);
}

/*
 * Restore sets.  What a restore reads first of a checkpoint's VM state is
 * much the same each time: the device state, then the pages the guest
 * touches as it resumes, which QEMU's on-demand loader (patch 7 of the
 * series) reads as they fault, the rest coming in the background.  A
 * goto to a checkpoint most of whose VM state is not cached (a restore on
 * another host) records which units of RESTORE_UNIT bytes the VM state
 * reads touch, in order, up to RESTORE_SET_UNITS of them.  The set is
 * kept in the database, and so reaches other hosts with the next
 * metadata snapshot (after the next upload, or at close); a later goto to the
 * checkpoint fetches those units first, several at once, while QEMU is
 * still setting the machine up (warm_queue()).  It is a hint: losing it
 * costs only time.
 */
#define RESTORE_UNIT (1ULL << 20)
#define RESTORE_SET_UNITS 64

/*
 * Stop recording, and store the restore set recorded if its checkpoint
 * is still there.  Called with v->lock held.
 */
static void restore_set_end(SpriteVolume *v)
{
    g_autofree char *id = NULL;
    Ckpt *c;

    if (!v->rec_id) {
        return;
    }
    id = g_strdup_printf("%" G_GUINT64_FORMAT, v->rec_id);
    c = find_ckpt(v, id, NULL);
    if (c && v->rec_units->len &&
        sprite_meta_set_restore_set(v->meta, c->pub.id,
                                    (uint64_t *)v->rec_units->data,
                                    v->rec_units->len, NULL) == 0) {
        g_mutex_lock(&v->ckpt_lock);
        c->restore_units = v->rec_units->len;
        g_mutex_unlock(&v->ckpt_lock);
        /*
         * For the next flush's or the close's snapshot: one now would copy
         * the database under v->lock while the restore reads.
         */
        v->snap_due = true;
    }
    __atomic_store_n(&v->rec_id, 0, __ATOMIC_RELAXED);
    g_array_set_size(v->rec_units, 0);
}

/* VM state [@pos, @pos + @len) is being read.  Called with v->lock held. */
static void restore_set_note(SpriteVolume *v, uint64_t pos, uint64_t len)
{
    uint64_t unit;
    guint i;

    if (!v->rec_id || !len) {
        return;
    }
    for (unit = pos / RESTORE_UNIT; unit <= (pos + len - 1) / RESTORE_UNIT;
         unit++) {
        for (i = 0; i < v->rec_units->len; i++) {
            if (g_array_index(v->rec_units, uint64_t, i) == unit) {
                break;
            }
        }
        if (i < v->rec_units->len) {
            continue;
        }
        g_array_append_val(v->rec_units, unit);
        if (v->rec_units->len == RESTORE_SET_UNITS) {
            restore_set_end(v);
            return;
        }
    }
}

/*
 * Collect garbage if anything may have changed since the last pass (a
 * segment was applied, or garbage was waiting for its grace period).
 * Failures are harmless: the next pass tries again.  Returns how many
 * segments it deleted.
 */
static uint64_t maybe_collect(SpriteVolume *v, bool compaction)
{
    SpriteGcStats st = { 0 };
    uint64_t seq = __atomic_load_n(&v->seq, __ATOMIC_RELAXED);

    if (seq == v->gc_seq && !v->gc_waiting) {
        return 0;
    }
    if (sprite_volume_gc(v, compaction, &st, NULL) == 0) {
        v->gc_seq = seq;
        v->gc_waiting = st.waiting;
    }
    return st.segments;
}

/*
 * Upload whenever woken; after a failure, try again a little later.
 * Collect garbage every GC_INTERVAL_US.
 */
static gpointer shipper_main(gpointer opaque)
{
    SpriteVolume *v = opaque;
    int64_t retry_at = 0;
    int64_t gc_at = g_get_monotonic_time() + GC_INTERVAL_US;

    g_mutex_lock(&v->lock);
    while (!v->ship_stop) {
        int ret;

        if (!v->ship_wanted && !v->snap_wanted) {
            int64_t now;

            g_cond_wait_until(&v->ship_cond, &v->lock,
                              retry_at ? MIN(retry_at, gc_at) : gc_at);
            now = g_get_monotonic_time();
            if (retry_at && now >= retry_at) {
                v->ship_wanted = true;
            }
            if (now >= gc_at && !v->ship_stop) {
                g_mutex_unlock(&v->lock);
                maybe_collect(v, true);
                g_mutex_lock(&v->lock);
                gc_at = g_get_monotonic_time() + GC_INTERVAL_US;
            }
            continue;
        }
        if (v->ship_wanted) {
            v->ship_wanted = false;
            g_mutex_unlock(&v->lock);
            /* A failure stays sealed: the next flush reports it. */
            ret = flush_volume(v, NULL);
            g_mutex_lock(&v->lock);
            retry_at = ret < 0 && !v->fenced ?
                       g_get_monotonic_time() + SHIP_RETRY_US : 0;
        }
        if (v->snap_wanted) {
            v->snap_wanted = false;
            g_mutex_unlock(&v->lock);
            /* Best effort: a missing snapshot only makes opening slower. */
            ret = upload_snapshot(v, NULL);
            g_mutex_lock(&v->flush_lock);
            v->snap_inflight = false;
            if (ret == 0) {
                /* What flushes asked for meanwhile (a failure waits). */
                request_snapshot(v);
            }
            g_mutex_unlock(&v->flush_lock);
            g_mutex_lock(&v->lock);
            if (ret < 0) {
                v->snap_due = true;     /* for the next flush's attempt */
            }
        }
    }
    g_mutex_unlock(&v->lock);
    return NULL;
}

static void stop_shipper(SpriteVolume *v)
{
    if (v->shipper) {
        g_mutex_lock(&v->lock);
        v->ship_stop = true;
        g_cond_signal(&v->ship_cond);
        g_mutex_unlock(&v->lock);
        g_thread_join(v->shipper);
        v->shipper = NULL;
    }
}


static GHashTable *vm_index_new(void);

static SpriteVolume *volume_new(void)
{
    SpriteVolume *v = g_new0(SpriteVolume, 1);

    g_mutex_init(&v->lock);
    g_mutex_init(&v->flush_lock);
    v->lock_fd = -1;
    v->log_fd[0] = v->log_fd[1] = v->pend_fd = -1;
    v->map = sprite_extmap_new();
    v->pending = sprite_extmap_new();
    v->records = g_array_new(FALSE, FALSE, sizeof(SpriteRecord));
    g_mutex_init(&v->ckpt_lock);
    g_mutex_init(&v->gc_lock);
    g_cond_init(&v->ship_cond);
    g_cond_init(&v->pend_idle);
    v->vm_buf = g_byte_array_new();
    v->vm_stream = vm_index_new();
    v->rec_units = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    sprite_chunker_reset(&v->vm_chunker);
    v->ckpts = g_ptr_array_new_with_free_func(ckpt_free);
    return v;
}

static void volume_free(SpriteVolume *v)
{
    int i;

    stop_shipper(v);
    if (v->warm_pool) {
        /* Drop what is queued, wait for the fetches under way. */
        __atomic_add_fetch(&v->warm_gen, 1, __ATOMIC_RELAXED);
        g_thread_pool_free(v->warm_pool, TRUE, TRUE);
    }
    sprite_lease_release(v->lease);
    if (v->base) {
        sprite_volume_close(v->base);
    }
    sprite_meta_close(v->meta);
    sprite_segcache_close(v->cache);
    sealed_free(v->sealed);
    for (i = 0; i < 2; i++) {
        if (v->log_fd[i] >= 0) {
            close(v->log_fd[i]);
        }
    }
    if (v->lock_fd >= 0) {
        close(v->lock_fd);
    }
    if (v->private_dir) {
        remove_tree(v->dir);
    }
    sprite_objstore_close(v->os);
    sprite_extmap_free(v->map);
    sprite_extmap_free(v->pending);
    g_array_free(v->records, TRUE);
    g_byte_array_free(v->vm_buf, TRUE);
    g_hash_table_destroy(v->vm_stream);
    g_array_free(v->rec_units, TRUE);
    if (v->vm_ckpt) {
        g_hash_table_unref(v->vm_ckpt);
    }
    if (v->vm_unsaved) {
        g_hash_table_unref(v->vm_unsaved);
    }
    sprite_url_free(v->url);
    g_free(v->url_str);
    g_free(v->base_url);
    g_free(v->dir);
    g_mutex_clear(&v->lock);
    g_mutex_clear(&v->flush_lock);
    g_mutex_clear(&v->ckpt_lock);
    g_mutex_clear(&v->gc_lock);
    g_cond_clear(&v->ship_cond);
    g_cond_clear(&v->pend_idle);
    g_ptr_array_free(v->ckpts, TRUE);
    g_free(v);
}

/*
 * A base opened for a clone of checkpoint @id: read as that checkpoint.
 * Called before anyone else uses @v.
 */
static int pin_checkpoint(SpriteVolume *v, uint64_t id, GError **errp)
{
    g_autofree char *sid = g_strdup_printf("%" G_GUINT64_FORMAT, id);
    Ckpt *c = find_ckpt(v, sid, NULL);

    if (!c) {
        g_set_error(errp, SPRITE_ERROR, EIO, "volume '%s' lacks checkpoint "
                    "%" G_GUINT64_FORMAT " that its clones depend on",
                    v->url_str, id);
        return -EIO;
    }
    sprite_extmap_clear(v->map);
    v->size = c->pub.size;
    return sprite_meta_load_checkpoint(v->meta, id, v->map, errp);
}

/*
 * Open @o->url; a base of a clone is opened as of its segment @pin, and
 * as its checkpoint @pin_ckpt if non-zero.
 */
static int volume_open(const SpriteVolumeOptions *o, uint64_t pin,
                       uint64_t pin_ckpt, SpriteVolume **out, GError **errp)
{
    SpriteVolume *v = volume_new();
    Descriptor d = { 0 };
    g_autofree char *root = NULL;
    g_autofree char *segdir = NULL;
    uint64_t limit = o->cache_size ? o->cache_size : SPRITE_DEFAULT_CACHE_SIZE;
    unsigned tries;
    int ret;

    v->read_only = o->read_only || pin;
    v->pin_seq = pin;
    v->gc_grace_ms = o->gc_grace_ms ? o->gc_grace_ms :
                     SPRITE_DEFAULT_GC_GRACE_MS;
    v->url = sprite_url_parse(o->url, errp);
    if (!v->url) {
        ret = -EINVAL;
        goto fail;
    }
    v->url_str = sprite_url_to_string(v->url);
    v->os = open_store(o, v->url, errp);
    if (!v->os) {
        ret = -EIO;
        if (errp && *errp) {
            ret = -(*errp)->code;
        }
        goto fail;
    }
    ret = read_descriptor(v->os, v->url, &d, errp);
    if (ret < 0) {
        goto fail;
    }
    if (d.base) {
        SpriteVolumeOptions bo = *o;

        bo.url = d.base;
        bo.read_only = true;
        ret = volume_open(&bo, d.base_seq, d.base_ckpt, &v->base, errp);
        if (ret < 0) {
            g_prefix_error(errp, "base of volume '%s': ", v->url_str);
            goto fail;
        }
        v->base_url = g_strdup(d.base);
        v->base_seq = d.base_seq;
        v->base_ckpt = d.base_ckpt;
    }

    root = o->cache_dir ? g_strdup(o->cache_dir) : default_cache_root();
    v->dir = volume_cache_dir(root, v->url_str, v->url->volume, pin);
    ret = lock_cache_dir(v, errp);
    if (ret < 0) {
        goto fail;
    }
    segdir = g_build_filename(v->dir, "seg", NULL);
    v->cache_limit = limit;
    ret = sprite_segcache_open(v->os, v->url->volume, segdir, limit,
                               &v->cache, errp);
    if (ret < 0) {
        goto fail;
    }
    if (!v->read_only) {
        /* Before reading the metadata: nobody else adds segments now. */
        ret = sprite_lease_take(v->os, v->url->volume, v->url_str,
                                o->lease_ms ? o->lease_ms : LEASE_MS,
                                o->takeover, &v->lease, &v->lease_info,
                                errp);
        if (ret < 0) {
            goto fail;
        }
        /* A previous writer that may still run loses its next flush. */
        v->segment_due = v->lease_info.was_held;
    }
    ret = load_metadata(v, &d, true, errp);
    /*
     * A store whose PUTs are visible before they complete (s3rver writes
     * objects in place) can show a reader the segment or metadata
     * snapshot that the writer is uploading, cut short.  A second
     * look finds it whole, while damage stays.
     */
    for (tries = 0; ret == -EIO && v->read_only && tries < RO_RELOADS;
         tries++) {
        g_usleep(RO_RELOAD_US);
        /* The database holds only whole segments: go on from it. */
        ret = reload_metadata(v, &d, true, errp);
    }
    if (ret == 0 && pin_ckpt) {
        ret = pin_checkpoint(v, pin_ckpt, errp);
    }
    if (ret < 0) {
        goto fail;
    }
    if (!v->read_only) {
        ret = open_logs(v, errp);
        if (ret < 0) {
            goto fail;
        }
        /* Claim the next segment now, before a stale writer can (I6). */
        ret = flush_volume(v, errp);
        if (ret < 0) {
            goto fail;
        }
        v->shipper = g_thread_new("sprite-ship", shipper_main, v);
    }
    descriptor_clear(&d);
    *out = v;
    return 0;

fail:
    descriptor_clear(&d);
    volume_free(v);
    return ret;
}

int sprite_volume_open(const SpriteVolumeOptions *o, SpriteVolume **out,
                       GError **errp)
{
    return volume_open(o, 0, 0, out, errp);
}

/*
 * Give the new clone @o->url of checkpoint @from the checkpoint itself:
 * taken while the clone reads as the base's checkpoint, it restores that
 * VM state.
 */
static int inherit_checkpoint(const SpriteVolumeOptions *o,
                              const SpriteCheckpoint *from, GError **errp)
{
    SpriteVolumeOptions wo = *o;
    SpriteVolume *v;
    SpriteCheckpoint ck = *from;
    int ret;

    wo.read_only = false;
    ret = sprite_volume_open(&wo, &v, errp);
    if (ret < 0) {
        return ret;
    }
    ret = sprite_volume_checkpoint_create(v, &ck, errp);
    if (ret == 0) {
        ret = sprite_volume_flush(v, errp);
    }
    sprite_volume_close(v);
    return ret;
}

/*
 * Record on the base what volume @uuid (@url) depends on: the base as of
 * segment @seq (a pin, which its garbage collector honours) and, if @id
 * is non-zero, checkpoint @id (a hold, which refuses deleting it).
 */
static int put_pin_and_hold(SpriteVolume *base, uint64_t seq, uint64_t id,
                            const char *uuid, const char *url, GError **errp)
{
    g_autofree char *pin = sprite_key_pin(base->url->volume, seq, uuid);
    int ret;

    ret = sprite_objstore_put(base->os, pin, url, strlen(url),
                              SPRITE_PUT_DEFAULT, NULL, NULL, errp);
    if (ret == 0 && id) {
        g_autofree char *prefix = sprite_key_holds(base->url->volume, id);
        g_autofree char *hold = g_strconcat(prefix, uuid, NULL);

        ret = sprite_objstore_put(base->os, hold, url, strlen(url),
                                  SPRITE_PUT_DEFAULT, NULL, NULL, errp);
    }
    return ret;
}

int sprite_volume_create(const SpriteVolumeOptions *o, uint64_t size,
                         const char *base_url, const char *base_checkpoint,
                         GError **errp)
{
    SpriteCheckpoint from = { 0 };
    g_autofree char *from_name = NULL;
    g_autoptr(SpriteUrl) u = NULL;
    g_autoptr(GKeyFile) kf = g_key_file_new();
    g_autoptr(GBytes) obj = NULL;
    g_autofree char *uuid = g_uuid_string_random();
    g_autofree char *body = NULL;
    g_autofree char *key = NULL;
    g_autofree char *url = NULL;
    g_autofree char *canon_base = NULL;
    SpriteObjstore *os;
    uint64_t base_seq = 0;
    int ret;

    u = sprite_url_parse(o->url, errp);
    if (!u) {
        return -EINVAL;
    }
    url = sprite_url_to_string(u);
    if (base_checkpoint && !base_url) {
        g_set_error(errp, SPRITE_ERROR, EINVAL,
                    "a base checkpoint needs a base volume");
        return -EINVAL;
    }
    if (base_url) {
        SpriteVolumeOptions bo = *o;
        SpriteVolume *base;
        uint64_t base_size;

        bo.url = base_url;
        bo.read_only = true;
        ret = sprite_volume_open(&bo, &base, errp);
        if (ret < 0) {
            g_prefix_error(errp, "base volume: ");
            return ret;
        }
        base_size = base->size;
        base_seq = base->seq;
        canon_base = g_strdup(base->url_str);
        if (base_checkpoint) {
            Ckpt *c = find_ckpt_by_id_or_name(base, base_checkpoint);

            if (!c) {
                g_set_error(errp, SPRITE_ERROR, ENOENT, "base volume '%s' "
                            "has no checkpoint '%s'", canon_base,
                            base_checkpoint);
                sprite_volume_close(base);
                return -ENOENT;
            }
            from = c->pub;
            from.name = from_name = g_strdup(c->pub.name);
            base_size = from.size;
        }
        if (size == 0) {
            size = base_size;
        }
        ret = 0;
        if (size < base_size) {
            g_set_error(errp, SPRITE_ERROR, EINVAL,
                        "size %" G_GUINT64_FORMAT " is smaller than the "
                        "base's", size);
            ret = -EINVAL;
        } else if (g_str_equal(canon_base, url)) {
            g_set_error(errp, SPRITE_ERROR, EINVAL,
                        "a volume cannot be its own base");
            ret = -EINVAL;
        } else {
            /* Before the clone exists: a pin without clone is harmless. */
            ret = put_pin_and_hold(base, base_seq, from.id, uuid, url, errp);
        }
        sprite_volume_close(base);
        if (ret < 0) {
            return ret;
        }
    }
    if (size == 0 || size % SPRITE_SECTOR_SIZE || size > (1ULL << 62)) {
        g_set_error(errp, SPRITE_ERROR, EINVAL,
                    "invalid volume size %" G_GUINT64_FORMAT ": it must be "
                    "a positive multiple of %d bytes, at most 4 EiB", size,
                    SPRITE_SECTOR_SIZE);
        return -EINVAL;
    }

    os = open_store(o, u, errp);
    if (!os) {
        return errp && *errp ? -(*errp)->code : -EIO;
    }
    key = sprite_key_descriptor(u->volume);
    /* Servers that ignore If-None-Match still get a check. */
    ret = sprite_objstore_head(os, key, NULL, NULL, NULL);
    if (ret == 0) {
        ret = -EEXIST;
    } else {
        g_key_file_set_string(kf, "volume", "uuid", uuid);
        g_key_file_set_uint64(kf, "volume", "size", size);
        if (canon_base) {
            g_key_file_set_string(kf, "volume", "base", canon_base);
            g_key_file_set_uint64(kf, "volume", "base-seq", base_seq);
        }
        if (from.id) {
            g_key_file_set_uint64(kf, "volume", "base-checkpoint", from.id);
        }
        body = g_key_file_to_data(kf, NULL, NULL);
        obj = sprite_desc_encode(body);
        ret = sprite_objstore_put(os, key, g_bytes_get_data(obj, NULL),
                                  g_bytes_get_size(obj),
                                  SPRITE_PUT_IF_NONE_MATCH, NULL, NULL, errp);
    }
    if (ret == -EEXIST) {
        g_clear_error(errp);
        g_set_error(errp, SPRITE_ERROR, EEXIST, "volume '%s' already exists",
                    url);
    }
    sprite_objstore_close(os);
    if (ret == 0 && from.id) {
        ret = inherit_checkpoint(o, &from, errp);
    }
    return ret;
}

/* ------------------------------------------------------------------ */
/* Writing and flushing */

static int check_range(SpriteVolume *v, uint64_t offset, uint64_t len,
                       GError **errp)
{
    if (offset > v->size || len > v->size - offset) {
        g_set_error(errp, SPRITE_ERROR, EINVAL,
                    "request at %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT
                    " is beyond the end of the volume (%" G_GUINT64_FORMAT
                    " bytes)", offset, len, v->size);
        return -EINVAL;
    }
    return 0;
}

/* Called with v->lock held */
static int check_writable(SpriteVolume *v, GError **errp)
{
    if (v->read_only) {
        g_set_error(errp, SPRITE_ERROR, EROFS, "volume '%s' is open "
                    "read-only", v->url_str);
        return -EROFS;
    }
    if (!v->fenced && sprite_lease_lost(v->lease)) {
        v->fenced = true;
    }
    if (v->fenced) {
        g_set_error(errp, SPRITE_ERROR, EIO, "volume '%s' was taken over by "
                    "another writer: this one has stopped", v->url_str);
        return -EIO;
    }
    return 0;
}

static uint64_t iov_len(const struct iovec *iov, int iovcnt)
{
    uint64_t n = 0;
    int i;

    for (i = 0; i < iovcnt; i++) {
        n += iov[i].iov_len;
    }
    return n;
}

/*
 * Log a DATA or ZERO record and map it in the pending overlay.  A write
 * that continues the previous one extends its record.
 * Called with v->lock held.
 */
static void add_record(SpriteVolume *v, const SpriteRecord *r)
{
    SpriteRecord *last = v->records->len ?
        &g_array_index(v->records, SpriteRecord, v->records->len - 1) : NULL;
    SpriteExtent e = {
        .start = r->offset,
        .len = r->length,
        .seg = pending_seq(v),
        .data_off = r->data_off,
        .kind = r->kind == SPRITE_REC_DATA ? SPRITE_EXT_DATA : SPRITE_EXT_ZERO,
    };

    if (r->offset < SPRITE_VMSTATE_BASE) {
        v->pend_disk++;
    }
    if (r->kind == SPRITE_REC_DATA && last && last->kind == SPRITE_REC_DATA &&
        last->offset + last->length == r->offset &&
        last->data_off + last->length == r->data_off) {
        last->length += r->length;
        e.start = last->offset;
        e.len = last->length;
        e.data_off = last->data_off;
    } else {
        g_array_append_val(v->records, *r);
    }
    sprite_extmap_set(v->pending, &e, NULL, NULL);
}

/*
 * Make room for @len bytes at the end of the pending log; returns where
 * they go.  Called with v->lock held.
 */
static uint64_t pend_reserve(SpriteVolume *v, uint64_t len)
{
    uint64_t data_off = v->pend_len;

    v->pend_len += len;
    __atomic_add_fetch(&v->unshipped, len, __ATOMIC_RELAXED);
    return data_off;
}

/* Write @len bytes from @iov at @data_off of the log in @fd. */
static int log_write(SpriteVolume *v, int fd, const struct iovec *iov,
                     int iovcnt, uint64_t len, uint64_t data_off,
                     GError **errp)
{
    g_autofree struct iovec *w = g_new(struct iovec, MAX(iovcnt, 1));
    uint64_t done = 0;
    int n = 0, first = 0;

    /* @iov may hold more than @len bytes: write exactly @len. */
    while (n < iovcnt && done < len) {
        w[n].iov_base = iov[n].iov_base;
        w[n].iov_len = MIN(iov[n].iov_len, len - done);
        done += w[n++].iov_len;
    }
    done = 0;
    while (done < len) {
        ssize_t k = pwritev(fd, w + first, MIN(n - first, IOV_MAX),
                            PEND_RESERVE + data_off + done);

        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return errno_error(errp, k < 0 ? errno : EIO, "cannot write the "
                               "pending log of volume '%s'", v->url_str);
        }
        done += k;
        /* Skip what a short write took. */
        while (k > 0 && (size_t)k >= w[first].iov_len) {
            k -= w[first++].iov_len;
        }
        if (k > 0) {
            w[first].iov_base = (uint8_t *)w[first].iov_base + k;
            w[first].iov_len -= k;
        }
    }
    return 0;
}

/*
 * Append @len bytes from @iov to the pending log; *@data_off is where.
 * Called with v->lock held.
 */
static int pend_append(SpriteVolume *v, const struct iovec *iov, int iovcnt,
                       uint64_t len, uint64_t *data_off, GError **errp)
{
    uint64_t at = pend_reserve(v, len);
    int ret = log_write(v, v->pend_fd, iov, iovcnt, len, at, errp);

    if (ret < 0) {
        /* Nobody took room after it (v->lock is held): give it back. */
        __atomic_sub_fetch(&v->unshipped, len, __ATOMIC_RELAXED);
        v->pend_len = at;
        return ret;
    }
    *data_off = at;
    return 0;
}

/*
 * After a write, with v->lock held: wake the shipper to upload without
 * waiting for a flush once enough is pending.  A log of VM state alone
 * (savevm streaming) waits for the checkpoint that ends it, up to half the
 * hard limit, so that uploads do not compete with savevm for the host.
 * Past the hard limit the writer must upload itself (flush_volume(), with
 * neither lock held; a try writer leaves that to the next write): says
 * whether.  The write is acknowledged either way; a failure shows at the
 * next flush.
 */
static bool pend_grew(SpriteVolume *v)
{
    if (v->pend_len >= (v->pend_disk ? PENDING_MAX : PENDING_HARD / 2)) {
        kick_shipper(v);
    }
    return v->pend_len >= PENDING_HARD;
}

static void maybe_flush(SpriteVolume *v)
{
    bool hard;

    g_mutex_lock(&v->lock);
    hard = pend_grew(v);
    g_mutex_unlock(&v->lock);
    if (hard) {
        flush_volume(v, NULL);
    }
}

/*
 * The cache directory is full (or the log reached the file size limit):
 * a flush uploads what the log holds and empties it, which makes room.
 */
static bool out_of_room(int ret)
{
    return ret == -ENOSPC || ret == -EFBIG || ret == -EDQUOT;
}

/*
 * Give back the room that the log files keep past their data (LOG_KEEP),
 * but a sealed log's that is still to be uploaded.  Called with neither
 * lock held.
 */
static void logs_trim(SpriteVolume *v)
{
    int i;

    g_mutex_lock(&v->flush_lock);       /* no seal meanwhile */
    g_mutex_lock(&v->lock);
    for (i = 0; i < 2; i++) {
        int fd = v->log_fd[i];

        if (fd < 0 || (v->sealed && v->sealed->fd == fd)) {
            continue;
        }
        /* Writes in flight write within v->pend_len. */
        if (ftruncate(fd, fd == v->pend_fd ? PEND_RESERVE + v->pend_len : 0)
            < 0) {
            /* the write that needs the room fails again, and says so */
        }
    }
    g_mutex_unlock(&v->lock);
    g_mutex_unlock(&v->flush_lock);
}

/*
 * Make room after out_of_room(@ret) by flushing, and say whether to try
 * again (then *@errp is cleared).  Called with neither lock held.
 */
static bool flush_for_room(SpriteVolume *v, int ret, GError **errp)
{
    if (!out_of_room(ret) || flush_volume(v, NULL) < 0) {
        return false;
    }
    logs_trim(v);
    g_clear_error(errp);
    return true;
}

/*
 * Take v->lock and room in the log for the write @r.  With @try, give up
 * (-EAGAIN, nothing done) rather than wait for the lock or a seal, upload
 * or report an error.  On success v->lock is held and the writer counted
 * in v->pend_writers, which a seal waits for: the writer must end the
 * write (write_end()) without waiting for anything a seal holds up.
 */
static int write_begin(SpriteVolume *v, SpriteRecord *r, bool try,
                       GError **errp)
{
    int ret;

    if (try) {
        if (!g_mutex_trylock(&v->lock)) {
            return -EAGAIN;
        }
        if (v->sealing || v->pend_len + r->length >= PENDING_HARD ||
            check_writable(v, NULL) < 0 ||
            check_range(v, r->offset, r->length, NULL) < 0) {
            g_mutex_unlock(&v->lock);
            return -EAGAIN;
        }
    } else {
        g_mutex_lock(&v->lock);
        while (v->sealing) {
            g_cond_wait(&v->pend_idle, &v->lock);
        }
        ret = check_writable(v, errp);
        if (ret == 0) {
            ret = check_range(v, r->offset, r->length, errp);
        }
        if (ret < 0) {
            g_mutex_unlock(&v->lock);
            return ret;
        }
    }
    r->data_off = pend_reserve(v, r->length);
    v->pend_writers++;
    return 0;
}

/*
 * Map @r's bytes, written into the log at r->data_off of @fd; or, if
 * writing them failed (@ret), give their room back unless a later write
 * took room after it (the hole is then uploaded with the rest, and
 * counted off v->unshipped then).  Lets a seal go on.  Says whether the
 * writer must upload (pend_grew()).  Called with v->lock held.
 */
static bool write_end(SpriteVolume *v, const SpriteRecord *r, int fd,
                      int ret)
{
    bool hard = false;

    if (ret == 0) {
        add_record(v, r);
        hard = pend_grew(v);
    } else if (fd == v->pend_fd && r->data_off + r->length == v->pend_len) {
        v->pend_len = r->data_off;
        __atomic_sub_fetch(&v->unshipped, r->length, __ATOMIC_RELAXED);
    } else if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         PEND_RESERVE + r->data_off, r->length) < 0) {
        /*
         * The hole goes out unmapped with the segment; zeroed, it does
         * not carry what a kept log file held before (LOG_KEEP).  Where
         * punching fails, those are this volume's own older bytes.
         */
    }
    if (--v->pend_writers == 0) {
        g_cond_broadcast(&v->pend_idle);
    }
    return hard;
}

/* Write @len bytes at @offset; with @w, as sprite_volume_try_writev(). */
static int write_data(SpriteVolume *v, uint64_t offset, uint64_t len,
                      const struct iovec *iov, int iovcnt, SpriteWrite *w,
                      GError **errp)
{
    SpriteRecord r = { .offset = offset, .length = len,
                       .kind = SPRITE_REC_DATA };
    bool hard;
    int fd;
    int ret;

    g_assert(iov_len(iov, iovcnt) >= len);
    if (len == 0) {
        return 0;
    }
    ret = write_begin(v, &r, w != NULL, errp);
    if (ret < 0) {
        return ret;
    }
    /* The bytes go into the room taken without the lock. */
    fd = v->pend_fd;
    g_mutex_unlock(&v->lock);
    ret = log_write(v, fd, iov, iovcnt, len, r.data_off, errp);
    if (w) {
        *w = (SpriteWrite) { .offset = offset, .len = len,
                             .data_off = r.data_off, .fd = fd, .ret = ret };
        return sprite_volume_try_write_end(v, w);
    }
    g_mutex_lock(&v->lock);
    hard = write_end(v, &r, fd, ret);
    g_mutex_unlock(&v->lock);
    if (hard) {
        flush_volume(v, NULL);
    }
    return ret;
}

int sprite_volume_writev(SpriteVolume *v, uint64_t offset, uint64_t len,
                         const struct iovec *iov, int iovcnt, GError **errp)
{
    int ret = write_data(v, offset, len, iov, iovcnt, NULL, errp);

    if (ret < 0 && flush_for_room(v, ret, errp)) {
        ret = write_data(v, offset, len, iov, iovcnt, NULL, errp);
    }
    return ret;
}

int sprite_volume_try_writev(SpriteVolume *v, uint64_t offset, uint64_t len,
                             const struct iovec *iov, int iovcnt,
                             SpriteWrite *w)
{
    return write_data(v, offset, len, iov, iovcnt, w, NULL);
}

int sprite_volume_try_write_end(SpriteVolume *v, const SpriteWrite *w)
{
    SpriteRecord r = { .offset = w->offset, .length = w->len,
                       .data_off = w->data_off, .kind = SPRITE_REC_DATA };

    if (!g_mutex_trylock(&v->lock)) {
        return -EINPROGRESS;
    }
    /*
     * Past the hard limit the writer does not upload here: write_begin()
     * sends the next write the waiting way, which does.
     */
    write_end(v, &r, w->fd, w->ret);
    g_mutex_unlock(&v->lock);
    return w->ret;
}

static int check_vmstate_range(uint64_t pos, uint64_t len, GError **errp)
{
    if (pos > SPRITE_VMSTATE_SIZE || len > SPRITE_VMSTATE_SIZE - pos) {
        g_set_error(errp, SPRITE_ERROR, EINVAL, "VM state at %"
                    G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " is beyond its "
                    "limit of %llu bytes", pos, len, SPRITE_VMSTATE_SIZE);
        return -EINVAL;
    }
    return 0;
}

/*
 * VM state.  savevm writes a stream in order from position 0.  In
 * QEMU's mapped-ram layout (which our QEMU uses for a volume, since its
 * VM state area survives checkpoints: SpriteVolume keeps it as the
 * checkpoint's, copy-on-write) the stream soon jumps past the RAM and
 * RAM pages are written at fixed offsets, only those that changed since
 * the last savevm or loadvm.  Writes from where the stream broke off
 * until it starts again at 0 are stored in place, as disk writes are.
 *
 * The stream itself (all of it without mapped-ram) the volume cuts
 * into content-defined chunks (store/chunker.h) and keeps
 * an index of the chunks of the newest checkpoint's VM state (the one
 * taken last, or gone to last when the database lists its chunks: the
 * process that took it saves them there), and of the stream being
 * written, by their 128-bit hash: a chunk found there is
 * stored as a REF record to the bytes already stored, so memory that did
 * not change since the previous checkpoint is neither stored nor
 * uploaded again, wherever it lands in the new stream.
 *
 * Every chunk an index names is in a map that keeps it from the garbage
 * collector: the newest checkpoint's, or the live VM state area.  So the
 * index of the stream is dropped whenever that area changes other than
 * by the stream going on (another position, a goto), and the other
 * index when its checkpoint is deleted.
 */
typedef struct VmChunk {
    XXH128_hash_t hash;
    uint64_t seq;               /* where its bytes are */
    uint64_t data_off;
    uint64_t len;
} VmChunk;

static guint vm_chunk_hash(gconstpointer p)
{
    return (guint)((const XXH128_hash_t *)p)->low64;
}

static gboolean vm_chunk_equal(gconstpointer a, gconstpointer b)
{
    return XXH128_isEqual(*(const XXH128_hash_t *)a,
                          *(const XXH128_hash_t *)b);
}

static GHashTable *vm_index_new(void)
{
    return g_hash_table_new_full(vm_chunk_hash, vm_chunk_equal, NULL, g_free);
}

/*
 * Record the index of checkpoint v->vm_unsaved_id in the database, as
 * its record is applied, so that a process that goes to it later (on
 * another host, say) refers to its chunks too.  Called with v->lock
 * held.
 */
static int vm_index_save(SpriteVolume *v, GError **errp)
{
    g_autoptr(GHashTable) index = g_steal_pointer(&v->vm_unsaved);
    g_autoptr(GArray) refs = g_array_sized_new(FALSE, FALSE,
                                               sizeof(SpriteChunkRef),
                                               g_hash_table_size(index));
    GHashTableIter it;
    gpointer p;

    g_hash_table_iter_init(&it, index);
    while (g_hash_table_iter_next(&it, NULL, &p)) {
        const VmChunk *c = p;
        SpriteChunkRef ref = { .seg = c->seq, .data_off = c->data_off,
                               .len = c->len };
        uint64_t lo = GUINT64_TO_LE(c->hash.low64);
        uint64_t hi = GUINT64_TO_LE(c->hash.high64);

        memcpy(ref.hash, &lo, 8);
        memcpy(ref.hash + 8, &hi, 8);
        g_array_append_val(refs, ref);
    }
    v->snap_due = true;
    return sprite_meta_add_vm_chunks(v->meta, v->vm_unsaved_id,
                                     (SpriteChunkRef *)refs->data, refs->len,
                                     errp);
}

static void vm_index_add_ref(const SpriteChunkRef *ref, void *opaque)
{
    VmChunk *c = g_new(VmChunk, 1);
    uint64_t lo, hi;

    memcpy(&lo, ref->hash, 8);
    memcpy(&hi, ref->hash + 8, 8);
    c->hash.low64 = GUINT64_FROM_LE(lo);
    c->hash.high64 = GUINT64_FROM_LE(hi);
    c->seq = ref->seg;
    c->data_off = ref->data_off;
    c->len = ref->len;
    g_hash_table_replace(opaque, &c->hash, c);
}

/*
 * After going to checkpoint @id: make its chunks the index, if the
 * database has them.  Called with v->lock held.
 */
static void vm_index_load(SpriteVolume *v, uint64_t id)
{
    GHashTable *index;

    if (v->vm_ckpt && v->vm_ckpt_id == id) {
        return;
    }
    index = vm_index_new();
    if (sprite_meta_foreach_vm_chunk(v->meta, id, vm_index_add_ref, index,
                                     NULL) < 0 ||
        !g_hash_table_size(index)) {
        g_hash_table_destroy(index);
        return;
    }
    if (v->vm_ckpt) {
        g_hash_table_unref(v->vm_ckpt);
    }
    v->vm_ckpt = index;
    v->vm_ckpt_id = id;
}

/*
 * Map VM state [@offset, + @len) to @len bytes at @data_off of segment
 * @seq, stored before (a REF record).  Called with v->lock held.
 */
static void add_ref(SpriteVolume *v, uint64_t offset, uint64_t len,
                    uint64_t seq, uint64_t data_off)
{
    SpriteRecord *last = v->records->len ?
        &g_array_index(v->records, SpriteRecord, v->records->len - 1) : NULL;
    SpriteRecord r = { .offset = offset, .length = len, .data_off = data_off,
                       .kind = SPRITE_REC_REF,
                       .back = pending_seq(v) - seq };
    SpriteExtent e = { .start = offset, .len = len, .seg = seq,
                       .data_off = data_off, .kind = SPRITE_EXT_DATA };

    g_assert(seq < pending_seq(v) && r.back > 0);
    if (last && last->kind == SPRITE_REC_REF && last->back == r.back &&
        last->offset + last->length == offset &&
        last->data_off + last->length == data_off) {
        last->length += len;
        e.start = last->offset;
        e.len = last->length;
        e.data_off = last->data_off;
    } else {
        g_array_append_val(v->records, r);
    }
    sprite_extmap_set(v->pending, &e, NULL, NULL);
}

/*
 * Store chunk @p (@n bytes at stream position @pos): as a reference if
 * an index knows its bytes, else as data.  Called with v->lock held.
 */
static int vm_emit(SpriteVolume *v, uint64_t pos, const uint8_t *p,
                   size_t n, GError **errp)
{
    XXH128_hash_t h = XXH3_128bits(p, n);
    VmChunk *c = g_hash_table_lookup(v->vm_stream, &h);
    SpriteRecord r = { .offset = SPRITE_VMSTATE_BASE + pos, .length = n,
                       .kind = SPRITE_REC_DATA };
    VmChunk *at;
    int ret;

    if (!c && v->vm_ckpt) {
        c = g_hash_table_lookup(v->vm_ckpt, &h);
    }
    if (c && c->len == n) {
        if (c->seq == pending_seq(v)) {
            r.data_off = c->data_off;
            add_record(v, &r);
        } else {
            add_ref(v, r.offset, n, c->seq, c->data_off);
        }
        if (g_hash_table_contains(v->vm_stream, &h)) {
            return 0;
        }
        at = g_memdup2(c, sizeof(*c));
    } else {
        ret = pend_append(v, &(struct iovec){ (void *)p, n }, 1, n,
                          &r.data_off, errp);
        if (ret < 0) {
            return ret;
        }
        add_record(v, &r);
        at = g_new(VmChunk, 1);
        *at = (VmChunk){ .hash = h, .seq = pending_seq(v),
                         .data_off = r.data_off, .len = n };
    }
    g_hash_table_replace(v->vm_stream, &at->hash, at);
    return 0;
}

/*
 * Store the chunks of the stream buffer that are complete, or with
 * @all, everything it holds.  Called with v->lock held.
 */
static int vm_cut(SpriteVolume *v, bool all, GError **errp)
{
    uint8_t *buf = v->vm_buf->data;
    size_t len = v->vm_buf->len;
    int ret = 0;

    while (v->vm_scanned < len) {
        size_t n = sprite_chunker_scan(&v->vm_chunker, buf + v->vm_scanned,
                                       len - v->vm_scanned);

        if (!n) {
            v->vm_scanned = len;
            break;
        }
        v->vm_scanned += n;
        ret = vm_emit(v, v->vm_pos + v->vm_start, buf + v->vm_start,
                      v->vm_scanned - v->vm_start, errp);
        if (ret < 0) {
            return ret;
        }
        v->vm_start = v->vm_scanned;
    }
    if (all && v->vm_start < len) {
        ret = vm_emit(v, v->vm_pos + v->vm_start, buf + v->vm_start,
                      len - v->vm_start, errp);
        if (ret < 0) {
            return ret;
        }
        v->vm_start = v->vm_scanned = len;
        sprite_chunker_reset(&v->vm_chunker);
    }
    /* Keep the buffer small: drop what was stored, now and then. */
    if (v->vm_start == len || v->vm_start >= (4u << 20)) {
        g_byte_array_remove_range(v->vm_buf, 0, v->vm_start);
        v->vm_pos += v->vm_start;
        v->vm_scanned -= v->vm_start;
        v->vm_start = 0;
    }
    return 0;
}

/*
 * Store what the stream buffer holds and forget the stream's index: the
 * live VM state area is about to change other than by the stream going
 * on.  Called with v->lock held.
 */
static int vm_end_stream(SpriteVolume *v, GError **errp)
{
    int ret = vm_cut(v, true, errp);

    g_hash_table_remove_all(v->vm_stream);
    return ret;
}

/*
 * vm_cut() for callers that hold neither lock: if the cache directory is
 * full, make room and cut again (the buffer keeps what was not stored).
 */
static int vm_cut_making_room(SpriteVolume *v, bool all, GError **errp)
{
    int ret;

    g_mutex_lock(&v->lock);
    ret = vm_cut(v, all, errp);
    g_mutex_unlock(&v->lock);
    if (ret < 0 && flush_for_room(v, ret, errp)) {
        g_mutex_lock(&v->lock);
        ret = vm_cut(v, all, errp);
        g_mutex_unlock(&v->lock);
    }
    return ret;
}

/* Store one piece of VM state in place (see vm_write_in_place()). */
static int vm_store_in_place(SpriteVolume *v, uint64_t pos, uint64_t len,
                             const struct iovec *iov, int iovcnt,
                             GError **errp)
{
    SpriteRecord r = { .offset = SPRITE_VMSTATE_BASE + pos, .length = len,
                       .kind = SPRITE_REC_DATA };
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret == 0 && !v->vm_in_place) {
        ret = vm_end_stream(v, errp);
        v->vm_in_place = ret == 0;
    }
    if (ret == 0) {
        ret = pend_append(v, iov, iovcnt, len, &r.data_off, errp);
    }
    if (ret == 0) {
        add_record(v, &r);
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

/* A VM state write in place is stored in pieces of at most this size,
 * each of which a full cache directory makes room for (flush_for_room). */
#define IN_PLACE_PIECE (1u << 20)

/*
 * Store @len bytes of VM state from @iov at @pos where they land, after
 * what the stream buffer holds.  Called with neither lock held; the
 * caller checked the range.
 */
static int vm_write_in_place(SpriteVolume *v, uint64_t pos, uint64_t len,
                             const struct iovec *iov, int iovcnt,
                             GError **errp)
{
    struct iovec piece[IOV_MAX];
    uint64_t done = 0, skip = 0;
    int i = 0, ret = 0;

    while (ret == 0 && done < len) {
        uint64_t n = 0;
        int k = 0;

        /* The next piece of @iov, from byte @skip of iov[i]. */
        while (n < IN_PLACE_PIECE && done + n < len && k < IOV_MAX) {
            size_t m = MIN(iov[i].iov_len - skip,
                           MIN(IN_PLACE_PIECE - n, len - done - n));

            piece[k++] = (struct iovec){ (uint8_t *)iov[i].iov_base + skip,
                                         m };
            n += m;
            skip += m;
            if (skip == iov[i].iov_len) {
                i++;
                skip = 0;
            }
        }
        ret = vm_store_in_place(v, pos + done, n, piece, k, errp);
        if (ret < 0 && flush_for_room(v, ret, errp)) {
            ret = vm_store_in_place(v, pos + done, n, piece, k, errp);
        }
        done += n;
    }
    return ret;
}

int sprite_volume_vmstate_writev(SpriteVolume *v, uint64_t pos, uint64_t len,
                                 const struct iovec *iov, int iovcnt,
                                 GError **errp)
{
    uint64_t done = 0;
    int i, ret;

    ret = check_vmstate_range(pos, len, errp);
    if (ret < 0 || len == 0) {
        return ret;
    }
    g_assert(iov_len(iov, iovcnt) >= len);
    g_mutex_lock(&v->lock);
    restore_set_end(v);
    ret = check_writable(v, errp);
    if (ret == 0 && pos != 0 &&
        (v->vm_in_place || pos != v->vm_pos + v->vm_buf->len)) {
        g_mutex_unlock(&v->lock);
        ret = vm_write_in_place(v, pos, len, iov, iovcnt, errp);
        goto out;
    }
    if (ret == 0 && (pos != v->vm_pos + v->vm_buf->len || v->vm_in_place)) {
        /* A new stream, at 0. */
        ret = vm_end_stream(v, errp);
        v->vm_pos = pos;
        v->vm_in_place = false;
    }
    for (i = 0; ret == 0 && done < len; i++) {
        size_t n = MIN(iov[i].iov_len, len - done);

        g_byte_array_append(v->vm_buf, iov[i].iov_base, n);
        done += n;
    }
    g_mutex_unlock(&v->lock);
    if (ret == 0) {
        ret = vm_cut_making_room(v, false, errp);
    }
out:
    if (ret == 0) {
        maybe_flush(v);
    }
    return ret;
}

static int write_zero_record(SpriteVolume *v, uint64_t offset, uint64_t len,
                             GError **errp)
{
    SpriteRecord r = { .offset = offset, .length = len,
                       .kind = SPRITE_REC_ZERO };
    int ret;

    if (len == 0) {
        return 0;
    }
    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret == 0) {
        ret = check_range(v, offset, len, errp);
    }
    if (ret == 0) {
        add_record(v, &r);
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

int sprite_volume_write_zeroes(SpriteVolume *v, uint64_t offset,
                               uint64_t len, GError **errp)
{
    return write_zero_record(v, offset, len, errp);
}

int sprite_volume_discard(SpriteVolume *v, uint64_t offset, uint64_t len,
                          GError **errp)
{
    /*
     * A discarded range reads as zeroes: on a volume without base that
     * is an unmapped range, on a clone an explicit zero extent, so that
     * the base's bytes do not show through again.
     */
    return write_zero_record(v, offset, len, errp);
}

int sprite_volume_relocate(SpriteVolume *v, const SpriteExtent *e,
                           const uint8_t *buf, uint64_t *moved,
                           GError **errp)
{
    uint64_t pos = e->start, end = e->start + e->len;
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    /* After a goto, the durable map is not what the volume reads. */
    if (ret < 0 || v->pending_opaque || (v->sealed && v->sealed->opaque)) {
        goto out;
    }
    while (pos < end) {
        SpriteExtmap *above[2] = { v->pending,
                                   v->sealed ? v->sealed->map : NULL };
        SpriteExtent d, o;
        uint64_t next, n;
        bool covered = false;
        int i;

        if (!sprite_extmap_find(v->map, pos, &d, &n) ||
            d.kind != SPRITE_EXT_DATA || d.seg != e->seg ||
            d.data_off != e->data_off + (pos - e->start)) {
            break;              /* changed since the collector looked */
        }
        next = MIN(end, pos + d.len);
        for (i = 0; i < 2; i++) {
            if (!above[i]) {
                continue;
            }
            if (sprite_extmap_find(above[i], pos, &o, &n)) {
                covered = true;
                next = MIN(next, pos + o.len);
            } else {
                next = MIN(next, n);
            }
        }
        if (!covered) {
            SpriteRecord r = { .offset = pos, .length = next - pos,
                               .kind = SPRITE_REC_DATA };
            struct iovec iov = {
                .iov_base = (uint8_t *)buf + (pos - e->start),
                .iov_len = r.length,
            };

            ret = pend_append(v, &iov, 1, r.length, &r.data_off, errp);
            if (ret < 0) {
                break;
            }
            add_record(v, &r);
            *moved += r.length;
        }
        pos = next;
    }
out:
    g_mutex_unlock(&v->lock);
    return ret;
}

/*
 * Upload a metadata snapshot of the database as it is now.
 * Called with neither lock held.
 */
static int upload_snapshot(SpriteVolume *v, GError **errp)
{
    g_autoptr(GBytes) db = NULL;
    g_autoptr(GBytes) obj = NULL;
    g_autofree char *key = NULL;
    uint64_t seq;
    int ret;

    g_mutex_lock(&v->lock);
    seq = v->seq;
    ret = sprite_meta_set_u64(v->meta, "snap-seq", seq, errp);
    if (ret == 0) {
        ret = sprite_meta_export(v->meta, &db, errp);
    }
    g_mutex_unlock(&v->lock);
    if (ret < 0) {
        return ret;
    }
    obj = sprite_snap_encode(seq, g_bytes_get_data(db, NULL),
                             g_bytes_get_size(db));
    key = sprite_key_snapshot(v->url->volume, seq);
    ret = sprite_objstore_put(v->os, key, g_bytes_get_data(obj, NULL),
                              g_bytes_get_size(obj), SPRITE_PUT_DEFAULT,
                              NULL, NULL, errp);
    if (ret == 0) {
        g_mutex_lock(&v->flush_lock);
        v->snap_seq = MAX(v->snap_seq, seq);
        g_mutex_unlock(&v->flush_lock);
    }
    return ret;
}

/*
 * Turn the pending log into segment v->seq + 1 (v->sealed) and let the
 * other log file take writes while it uploads.  Costs no copy and no
 * file system operation; waits for the writes that took room in the log
 * to be mapped (write_end()).
 * Called with v->lock held and v->sealed NULL (so the other log is free:
 * empty, or holding stale bytes of an earlier seal, never read).
 */
static void seal_pending(SpriteVolume *v)
{
    Sealed *sl;
    SpriteSegHeader *h;

    /* Writes with room in the log finish, and no more start. */
    v->sealing = true;
    while (v->pend_writers) {
        g_cond_wait(&v->pend_idle, &v->lock);
    }
    v->sealing = false;
    g_cond_broadcast(&v->pend_idle);
    sl = g_new0(Sealed, 1);
    h = g_new0(SpriteSegHeader, 1);
    sl->fd = v->pend_fd;
    v->pend_fd = v->log_fd[v->pend_fd == v->log_fd[0]];
    sl->h = h;
    h->seq = v->seq + 1;
    h->epoch = v->lease_info.epoch;
    h->volume_size = v->size;
    h->nrecords = v->records->len;
    h->records = g_memdup2(v->records->data,
                           sizeof(SpriteRecord) * v->records->len);
    h->data_len = v->pend_len;
    h->header_len = sprite_seg_header_len(h->nrecords, h->data_len);
    sl->len = h->header_len + h->data_len;

    /* The overlay now describes the sealed data (read from sl->fd). */
    sl->map = v->pending;
    sl->opaque = v->pending_opaque;
    sl->disk = v->pend_disk || v->segment_due;
    v->pend_disk = 0;
    v->pending = sprite_extmap_new();
    v->pending_opaque = false;
    g_array_set_size(v->records, 0);
    v->pend_len = 0;
    v->segment_due = false;
    v->sealed = sl;
}

/*
 * Build the object of @sl: its header, then its data.  The header goes
 * in the log file's reserve, just before the data, and the object is
 * that part of the file, mapped; a header larger than the reserve means
 * a copy.  Called by the flushing thread, without v->lock: @sl's data no
 * longer changes.
 */
static int build_sealed(SpriteVolume *v, Sealed *sl, GError **errp)
{
    const SpriteSegHeader *h = sl->h;
    uint8_t *obj;
    int ret;

    if (h->header_len <= PEND_RESERVE) {
        off_t at = PEND_RESERVE - h->header_len;
        off_t end = PEND_RESERVE + h->data_len;
        struct stat st;

        /*
         * A log without data may be empty: give the mapping its bytes
         * (a log kept from an earlier seal may hold more: leave them).
         */
        if (fstat(sl->fd, &st) < 0 ||
            (st.st_size < end && ftruncate(sl->fd, end) < 0)) {
            return errno_error(errp, errno, "cannot size the sealed log of "
                               "volume '%s'", v->url_str);
        }
        obj = mmap(NULL, sl->len, PROT_READ | PROT_WRITE, MAP_SHARED,
                   sl->fd, at);
        if (obj == MAP_FAILED) {
            return errno_error(errp, errno, "cannot map the sealed log of "
                               "volume '%s'", v->url_str);
        }
        sl->mapped = true;
    } else {
        obj = g_malloc(sl->len);
        ret = pread_full(sl->fd, obj + h->header_len, h->data_len,
                         PEND_RESERVE);
        if (ret < 0) {
            g_free(obj);
            return errno_error(errp, -ret, "cannot read the sealed log of "
                               "volume '%s'", v->url_str);
        }
    }
    sprite_seg_header_encode(sl->h, obj + h->header_len, obj);
    sl->obj = obj;
    return 0;
}

/*
 * Give the cache its copy of @sl, uploaded: for a large segment that
 * changes the disk, the sealed log file itself when the file system can
 * cut the room before the header off it (the file is then the object),
 * with a new log file in its place; else a copy.  Cutting writes the
 * file back to disk first (ext4), which costs a small flush more than
 * the copy it saves, and drops the file from the page cache: VM state
 * alone (savevm), which loadvm reads back soon, is copied.
 * Called with v->lock held (readers of the sealed log hold it).
 */
static void cache_sealed(SpriteVolume *v, Sealed *sl)
{
    int i = sl->fd == v->log_fd[1];
    g_autofree char *path = log_path(v, i);
    g_autofree char *next = g_strconcat(path, ".next", NULL);
    off_t cut = PEND_RESERVE - (off_t)sl->h->header_len;
    int fd;

    if (!sl->mapped || !sl->disk || sl->h->data_len < ADOPT_MIN ||
        ftruncate(sl->fd, PEND_RESERVE + sl->h->data_len) < 0 ||
        (cut && fallocate(sl->fd, FALLOC_FL_COLLAPSE_RANGE, 0, cut) < 0)) {
        sprite_segcache_insert(v->cache, sl->h->seq, sl->obj, sl->len, NULL);
        return;
    }
    /* The mapping shows the old offsets now: nothing reads it again. */
    fd = open(next, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return;                 /* sealed_free() empties it for reuse */
    }
    if (sprite_segcache_adopt(v->cache, sl->h->seq, path, sl->len,
                              NULL) < 0 && access(path, F_OK) == 0) {
        /* Still ours: sealed_free() empties it for reuse. */
        close(fd);
        unlink(next);
        return;
    }
    if (rename(next, path) < 0) {
        unlink(next);           /* the new log works unnamed */
    }
    v->log_fd[i] = fd;
    close(sl->fd);
    sl->fd = -1;
}

/*
 * PUT v->sealed, then map it (I3).  On failure it stays sealed, to be
 * put again by the next flush.
 * Called with v->flush_lock held and v->lock not held.
 */
static int upload_sealed(SpriteVolume *v, GError **errp)
{
    Sealed *sl = v->sealed;     /* only this thread changes it now */
    g_autofree char *key = sprite_key_segment(v->url->volume, sl->h->seq);
    int ret = 0;

    if (!sl->obj) {
        ret = build_sealed(v, sl, errp);
    }
    if (ret == 0) {
        ret = sprite_objstore_put(v->os, key, sl->obj, sl->len,
                                  SPRITE_PUT_IF_NONE_MATCH, NULL, NULL, errp);
    }
    g_mutex_lock(&v->lock);
    if (ret == -EEXIST) {
        /* Someone else wrote our next segment: we are not the writer. */
        v->fenced = true;
        g_clear_error(errp);
        g_set_error(errp, SPRITE_ERROR, EIO, "volume '%s': segment %016"
                    G_GINT64_MODIFIER "x was written by another writer; "
                    "stopping writes to this volume", v->url_str,
                    sl->h->seq);
        ret = -EIO;
    } else if (ret < 0) {
        g_prefix_error(errp, "volume '%s': cannot upload segment: ",
                       v->url_str);
    } else {
        /* Durable now: map it.  A cache failure only costs a refetch. */
        cache_sealed(v, sl);
        __atomic_sub_fetch(&v->unshipped, sl->h->data_len, __ATOMIC_RELAXED);
        ret = apply_segment(v, sl->h, errp);
        if (ret < 0) {
            /* Map and database disagree: write no more (reopen repairs). */
            v->fenced = true;
        }
        v->sealed = NULL;
        sealed_free(sl);
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

/*
 * Have the shipper upload a metadata snapshot if one is due: every
 * SNAPSHOT_EVERY segments, and after the database got what only a
 * snapshot takes to other hosts (v->snap_due).  It does so after the
 * flush that made it due has returned, since a flush's durability does
 * not need it.  Called with v->flush_lock held.
 */
static void request_snapshot(SpriteVolume *v)
{
    uint64_t seq = __atomic_load_n(&v->seq, __ATOMIC_RELAXED);

    if (v->snap_inflight) {
        return;
    }
    g_mutex_lock(&v->lock);
    if (seq - v->snap_seq >= SNAPSHOT_EVERY || v->snap_due) {
        v->snap_inflight = true;
        v->snap_due = false;
        v->snap_wanted = true;
        g_cond_signal(&v->ship_cond);
    }
    g_mutex_unlock(&v->lock);
}

/*
 * Make every write acknowledged before the call durable: upload a
 * segment left sealed by a failed flush, then the pending log.
 * Called with neither lock held.
 */
static int flush_volume(SpriteVolume *v, GError **errp)
{
    int ret;

    g_mutex_lock(&v->flush_lock);
    for (;;) {
        bool retrying;

        g_mutex_lock(&v->lock);
        ret = check_writable(v, errp);
        retrying = v->sealed != NULL;
        if (ret == 0 && !retrying) {
            if (v->records->len == 0 && !v->segment_due) {
                g_mutex_unlock(&v->lock);
                break;
            }
            seal_pending(v);
        }
        g_mutex_unlock(&v->lock);
        if (ret == 0) {
            ret = upload_sealed(v, errp);
        }
        /* After an old sealed segment, the pending log is still due. */
        if (ret < 0 || !retrying) {
            break;
        }
    }
    if (ret == 0) {
        request_snapshot(v);
    }
    g_mutex_unlock(&v->flush_lock);
    return ret;
}

int sprite_volume_flush_all(SpriteVolume *v, GError **errp)
{
    return flush_volume(v, errp);
}

int sprite_volume_flush(SpriteVolume *v, GError **errp)
{
    bool disk;

    if (v->read_only) {
        return 0;
    }
    g_mutex_lock(&v->lock);
    disk = v->pend_disk || v->segment_due || (v->sealed && v->sealed->disk);
    if (!disk && v->records->len) {
        kick_shipper(v);
    }
    g_mutex_unlock(&v->lock);
    return disk ? flush_volume(v, errp) : 0;
}

int sprite_volume_truncate(SpriteVolume *v, uint64_t size, GError **errp)
{
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret < 0) {
        goto out;
    }
    if (size < v->size) {
        g_set_error(errp, SPRITE_ERROR, ENOTSUP,
                    "shrinking a volume is not supported");
        ret = -ENOTSUP;
    } else if (size % SPRITE_SECTOR_SIZE || size > (1ULL << 62)) {
        g_set_error(errp, SPRITE_ERROR, EINVAL, "invalid volume size %"
                    G_GUINT64_FORMAT, size);
        ret = -EINVAL;
    } else if (size > v->size) {
        __atomic_store_n(&v->size, size, __ATOMIC_RELAXED);
        v->segment_due = true;
    }
out:
    g_mutex_unlock(&v->lock);
    return ret;
}

void sprite_volume_close(SpriteVolume *v)
{
    if (!v) {
        return;
    }
    g_mutex_lock(&v->lock);
    restore_set_end(v);
    g_mutex_unlock(&v->lock);
    stop_shipper(v);
    if (!v->read_only && flush_volume(v, NULL) == 0) {
        /* Also one that was asked for (a restore set, say) and not
         * uploaded yet. */
        if (v->seq > v->snap_seq || v->snap_inflight) {
            upload_snapshot(v, NULL);
        }
        /*
         * Only what is due: compaction would need another upload.  The
         * snapshot predates the deletes, so that a restore from it would
         * count the deleted segments in store-bytes: put them in a new
         * one, after an empty segment that gives it a sequence number.
         */
        if (maybe_collect(v, false)) {
            g_mutex_lock(&v->lock);
            v->segment_due = true;
            g_mutex_unlock(&v->lock);
            if (flush_volume(v, NULL) == 0) {
                upload_snapshot(v, NULL);
            }
        }
    }
    volume_free(v);
}

/* ------------------------------------------------------------------ */
/* Reading */

uint64_t sprite_volume_size(SpriteVolume *v)
{
    return __atomic_load_n(&v->size, __ATOMIC_RELAXED);
}

/*
 * The maps that make up what the volume reads, topmost first: the
 * pending overlay, the sealed segment's, the durable map, each unless one
 * above is opaque (a goto replaced the whole view).  Returns how many.
 * Called with v->lock held.
 */
static int view_layers(SpriteVolume *v, SpriteExtmap *layers[3])
{
    int n = 0;

    layers[n++] = v->pending;
    if (!v->pending_opaque) {
        if (v->sealed) {
            layers[n++] = v->sealed->map;
        }
        if (!v->sealed || !v->sealed->opaque) {
            layers[n++] = v->map;
        }
    }
    return n;
}

/*
 * What covers @off: sets *@e (clipped to start at @off and to end before
 * anything that overrides it) and returns true, or returns false with
 * *@gap set to the length of the unmapped range at @off (at most @len).
 * Called with v->lock held.
 */
static bool resolve(SpriteVolume *v, uint64_t off, uint64_t len,
                    SpriteExtent *e, uint64_t *gap)
{
    SpriteExtmap *layers[3];
    int i, n = view_layers(v, layers);

    for (i = 0; i < n; i++) {
        uint64_t next;

        if (sprite_extmap_find(layers[i], off, e, &next)) {
            e->len = MIN(e->len, len);
            return true;
        }
        len = MIN(len, next - off);
    }
    *gap = len;
    return false;
}

/* Copy @len bytes from @src into @iov at byte @pos. */
static void iov_from_buf(const struct iovec *iov, int iovcnt, uint64_t pos,
                         const uint8_t *src, uint64_t len)
{
    int i;

    for (i = 0; i < iovcnt && len; i++) {
        uint64_t n;

        if (pos >= iov[i].iov_len) {
            pos -= iov[i].iov_len;
            continue;
        }
        n = MIN(iov[i].iov_len - pos, len);
        if (src) {
            memcpy((uint8_t *)iov[i].iov_base + pos, src, n);
            src += n;
        } else {
            memset((uint8_t *)iov[i].iov_base + pos, 0, n);
        }
        len -= n;
        pos = 0;
    }
}

/* Where bytes [@pos, @pos + @len) of @iov are, if in one element. */
static uint8_t *iov_span(const struct iovec *iov, int iovcnt, uint64_t pos,
                         uint64_t len)
{
    int i;

    for (i = 0; i < iovcnt; i++) {
        if (pos < iov[i].iov_len) {
            return len <= iov[i].iov_len - pos ?
                   (uint8_t *)iov[i].iov_base + pos : NULL;
        }
        pos -= iov[i].iov_len;
    }
    return NULL;
}

/* Called with v->lock held; drops it while reading a durable segment. */
static int read_piece(SpriteVolume *v, const SpriteExtent *e, uint8_t *buf,
                      bool nowait, GError **errp)
{
    bool sealed = v->sealed && e->seg == v->sealed->h->seq;
    int ret;

    if (sealed || e->seg == pending_seq(v)) {
        ret = pread_full(sealed ? v->sealed->fd : v->pend_fd, buf, e->len,
                         PEND_RESERVE + e->data_off);
        if (ret < 0) {
            return errno_error(errp, -ret, "cannot read the %s log of "
                               "volume '%s'", sealed ? "sealed" : "pending",
                               v->url_str);
        }
        return 0;
    }
    if (nowait) {
        return sprite_segcache_read_cached(v->cache, e->seg, e->data_off,
                                           e->len, buf);
    }
    /*
     * A durable segment never changes: read it without the volume lock,
     * so that a cache miss's GET does not hold up other I/O (the segment
     * cache has its own lock, dropped during fetches).
     */
    g_mutex_unlock(&v->lock);
    ret = sprite_segcache_read(v->cache, e->seg, e->data_off, e->len, buf,
                               errp);
    g_mutex_lock(&v->lock);
    return ret;
}

/*
 * Read the disk or, at SPRITE_VMSTATE_BASE and above, the VM state.  With
 * @nowait, only from local files and checked cache chunks, and without
 * waiting for a lock: -EAGAIN (and no *@errp) if that is not enough.
 */
static int read_data(SpriteVolume *v, uint64_t offset, uint64_t len,
                     const struct iovec *iov, int iovcnt, bool nowait,
                     GError **errp)
{
    g_autofree uint8_t *buf = NULL;
    uint64_t pos = 0;
    int ret = 0;

    g_assert(iov_len(iov, iovcnt) >= len);
    if (!nowait) {
        g_mutex_lock(&v->lock);
    } else if (!g_mutex_trylock(&v->lock)) {
        return -EAGAIN;
    }
    if (offset < SPRITE_VMSTATE_BASE) {
        ret = check_range(v, offset, len, errp);
    }
    while (ret == 0 && pos < len) {
        uint64_t at = offset + pos;
        /* The base may be smaller than we are grown to. */
        uint64_t base_end = !v->base ? 0 : at >= SPRITE_VMSTATE_BASE ?
                            UINT64_MAX : v->base->size;
        SpriteExtent e;
        uint64_t n;

        if (resolve(v, at, len - pos, &e, &n)) {
            n = e.len;
            if (e.kind == SPRITE_EXT_DATA) {
                /* Straight into the caller's buffer when it can. */
                uint8_t *dst = iov_span(iov, iovcnt, pos, n);

                if (dst) {
                    ret = read_piece(v, &e, dst, nowait, errp);
                } else {
                    buf = g_realloc(buf, n);
                    ret = read_piece(v, &e, buf, nowait, errp);
                    if (ret == 0) {
                        iov_from_buf(iov, iovcnt, pos, buf, n);
                    }
                }
            } else {
                iov_from_buf(iov, iovcnt, pos, NULL, n);
            }
        } else if (at < base_end) {
            n = MIN(n, base_end - at);
            buf = g_realloc(buf, n);
            ret = read_data(v->base, at, n, &(struct iovec){ buf, n }, 1,
                            nowait, errp);
            if (ret == 0) {
                iov_from_buf(iov, iovcnt, pos, buf, n);
            }
        } else {
            iov_from_buf(iov, iovcnt, pos, NULL, n);
        }
        pos += n;
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

int sprite_volume_readv(SpriteVolume *v, uint64_t offset, uint64_t len,
                        const struct iovec *iov, int iovcnt, GError **errp)
{
    return read_data(v, offset, len, iov, iovcnt, false, errp);
}

int sprite_volume_try_readv(SpriteVolume *v, uint64_t offset, uint64_t len,
                            const struct iovec *iov, int iovcnt)
{
    return read_data(v, offset, len, iov, iovcnt, true, NULL);
}

int sprite_volume_vmstate_readv(SpriteVolume *v, uint64_t pos, uint64_t len,
                                const struct iovec *iov, int iovcnt,
                                GError **errp)
{
    int ret = check_vmstate_range(pos, len, errp);

    if (ret == 0 && __atomic_load_n(&v->rec_id, __ATOMIC_RELAXED)) {
        g_mutex_lock(&v->lock);
        restore_set_note(v, pos, len);
        g_mutex_unlock(&v->lock);
    }
    /* What the stream buffer holds is read from where it is stored. */
    if (ret == 0 && v->vm_buf->len) {
        ret = vm_cut_making_room(v, true, errp);
    }
    return ret < 0 ? ret : read_data(v, SPRITE_VMSTATE_BASE + pos, len, iov,
                                     iovcnt, false, errp);
}

int sprite_volume_block_status(SpriteVolume *v, uint64_t offset,
                               uint64_t len, uint64_t *pnum,
                               unsigned *status, GError **errp)
{
    SpriteExtent e;
    uint64_t n;
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_range(v, offset, len, errp);
    if (ret < 0 || len == 0) {
        *pnum = 0;
        *status = 0;
        goto out;
    }
    if (resolve(v, offset, len, &e, &n)) {
        *pnum = e.len;
        *status = SPRITE_STATUS_ALLOCATED |
                  (e.kind == SPRITE_EXT_DATA ? SPRITE_STATUS_DATA :
                                               SPRITE_STATUS_ZERO);
    } else if (v->base && offset < v->base->size) {
        n = MIN(n, v->base->size - offset);
        ret = sprite_volume_block_status(v->base, offset, n, pnum, status,
                                         errp);
        *status &= ~SPRITE_STATUS_ALLOCATED;
    } else {
        *pnum = n;
        *status = SPRITE_STATUS_ZERO;
    }
out:
    g_mutex_unlock(&v->lock);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Checkpoints */

typedef struct OverlayCtx {
    SpriteExtmap *dst;
    bool zero_is_none;
} OverlayCtx;

static bool overlay_one(const SpriteExtent *e, void *opaque)
{
    OverlayCtx *o = opaque;
    SpriteExtent x = *e;

    if (o->zero_is_none && x.kind == SPRITE_EXT_ZERO) {
        x.kind = SPRITE_EXT_NONE;
    }
    sprite_extmap_set(o->dst, &x, NULL, NULL);
    return true;
}

/*
 * A copy of what the volume reads now, as one map (ZERO extents become
 * unmapped ranges on a volume without base, as in the durable map).
 * Called with v->lock held.
 */
static SpriteExtmap *live_view(SpriteVolume *v)
{
    SpriteExtmap *layers[3];
    SpriteExtmap *m = sprite_extmap_new();
    OverlayCtx o = { .dst = m, .zero_is_none = !v->base };
    int i = view_layers(v, layers);

    while (i-- > 0) {
        sprite_extmap_foreach(layers[i], 0, UINT64_MAX, overlay_one, &o);
    }
    return m;
}

int sprite_volume_checkpoint_create(SpriteVolume *v, SpriteCheckpoint *ck,
                                    GError **errp)
{
    SpriteRecord r = { .kind = SPRITE_REC_CHECKPOINT };
    g_autofree char *text = NULL;
    Ckpt *c;
    guint i;
    int ret;

    if (!ck->name || !*ck->name) {
        g_set_error(errp, SPRITE_ERROR, EINVAL, "a checkpoint needs a name");
        return -EINVAL;
    }
    if (ck->vm_state_size > SPRITE_VMSTATE_SIZE) {
        return check_vmstate_range(0, ck->vm_state_size, errp);
    }
    /* Store the end of the VM state stream. */
    ret = vm_cut_making_room(v, true, errp);
    if (ret < 0) {
        return ret;
    }
    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret < 0) {
        goto out;
    }
    if (find_ckpt(v, NULL, ck->name)) {
        g_set_error(errp, SPRITE_ERROR, EEXIST, "volume '%s' already has a "
                    "checkpoint named '%s'", v->url_str, ck->name);
        ret = -EEXIST;
        goto out;
    }
    c = g_new0(Ckpt, 1);
    c->pub = *ck;
    c->pub.name = g_strdup(ck->name);
    c->pub.size = v->size;
    c->pub.id = 1;
    for (i = 0; i < v->ckpts->len; i++) {
        Ckpt *o = g_ptr_array_index(v->ckpts, i);

        c->pub.id = MAX(c->pub.id, o->pub.id + 1);
    }
    /* The data the volume stored before this checkpoint's record. */
    c->written = v->written + (v->sealed ? v->sealed->h->data_len : 0) +
                 v->pend_len;
    text = ckpt_encode(c);
    r.offset = c->pub.id;
    r.length = strlen(text);
    ret = pend_append(v, &(struct iovec){ text, r.length }, 1, r.length,
                      &r.data_off, errp);
    if (ret < 0) {
        ckpt_free(c);
        goto out;
    }
    c->seq = pending_seq(v);
    c->map = live_view(v);
    g_array_append_val(v->records, r);

    /*
     * The live VM state area stays as it is, now shared with the
     * checkpoint: the next savevm rewrites only what changed.  The next
     * stream starts at 0 again.
     */
    v->vm_in_place = false;
    g_mutex_lock(&v->ckpt_lock);
    g_ptr_array_add(v->ckpts, c);
    g_mutex_unlock(&v->ckpt_lock);
    ck->id = c->pub.id;

    /* Its chunks are the ones the next checkpoint is likely to repeat. */
    if (v->vm_ckpt) {
        g_hash_table_unref(v->vm_ckpt);
    }
    v->vm_ckpt = v->vm_stream;
    v->vm_ckpt_id = c->pub.id;
    v->vm_stream = vm_index_new();
    /* To be saved with the checkpoint's record (an older one's is not). */
    if (v->vm_unsaved) {
        g_hash_table_unref(v->vm_unsaved);
    }
    v->vm_unsaved = g_hash_table_ref(v->vm_ckpt);
    v->vm_unsaved_id = c->pub.id;
    kick_shipper(v);
out:
    g_mutex_unlock(&v->lock);
    return ret;
}

/*
 * A goto is followed by a loadvm, which reads the checkpoint's VM state.
 * On a host whose cache lacks it (a restore elsewhere), fetch meanwhile,
 * from several segments at once:
 *
 * - the checkpoint's restore set, if it has one, in the order recorded;
 * - from the file store, all of its VM state, each run in order so that
 *   the segment cache reads ahead, and the loadvm finds it fetched or on
 *   the way.  There a fetch is a local copy, and -loadvm of 346 MiB took
 *   0.6 s instead of 0.85 to 1.6.  From radosgw on the same 2-core host
 *   it took 2.6 to 3.2 s instead of 2.1 to 2.6: the server shares the
 *   CPUs, and the segment cache's read-ahead already keeps two runs of
 *   ranged GETs in flight for a loadvm that reads all (performance.md).
 */
#define WARM_THREADS 4
#define WARM_PIECE (1u << 20)

typedef struct WarmRun {
    unsigned gen;               /* SpriteVolume.warm_gen when queued */
    SpriteVolume *vol;          /* whose segment: the volume's or a base's */
    uint64_t seg;
    uint64_t data_off;
    uint64_t len;
} WarmRun;

static void warm_run(gpointer data, gpointer opaque)
{
    g_autofree WarmRun *r = data;
    SpriteVolume *v = opaque;
    uint64_t done;

    for (done = 0; done < r->len; done += WARM_PIECE) {
        /* A later goto, or the close, supersedes the run. */
        if (r->gen != __atomic_load_n(&v->warm_gen, __ATOMIC_RELAXED)) {
            return;
        }
        /* An error is left to the loadvm's own read to report. */
        if (sprite_segcache_fetch(r->vol->cache, r->seg, r->data_off + done,
                                  MIN(WARM_PIECE, r->len - done), NULL) < 0) {
            return;
        }
    }
}

/*
 * Append to @runs (WarmRun) the runs of [@lo, @hi) that @map (a
 * checkpoint's) holds in durable segments, in order; a clone's base
 * holds the rest, as read_data() finds.  Called with v->lock held.
 */
static void warm_collect(SpriteVolume *v, SpriteExtmap *map, uint64_t lo,
                         uint64_t hi, GArray *runs)
{
    uint64_t off = lo;

    while (off < hi) {
        WarmRun *last = runs->len ?
            &g_array_index(runs, WarmRun, runs->len - 1) : NULL;
        SpriteExtent e;
        uint64_t next;

        if (!sprite_extmap_find(map, off, &e, &next)) {
            next = MIN(next, hi);
            if (v->base) {
                /* Pinned: only its map, which does not change. */
                g_mutex_lock(&v->base->lock);
                warm_collect(v->base, v->base->map, off, next, runs);
                g_mutex_unlock(&v->base->lock);
            }
            off = next;
            continue;
        }
        e.len = MIN(e.len, hi - off);
        off += e.len;
        /* Segments after v->seq are the sealed and pending logs, here. */
        if (e.kind != SPRITE_EXT_DATA || e.seg > v->seq) {
            continue;
        }
        if (last && last->vol == v && last->seg == e.seg &&
            last->data_off + last->len == e.data_off) {
            last->len += e.len;
        } else {
            WarmRun r = { .vol = v, .seg = e.seg, .data_off = e.data_off,
                          .len = e.len };

            g_array_append_val(runs, r);
        }
    }
}

/* A set of WarmRun's segments: (volume, sequence number). */
static guint warm_seg_hash(gconstpointer p)
{
    const WarmRun *r = p;

    return g_direct_hash(r->vol) ^ g_int64_hash(&r->seg);
}

static gboolean warm_seg_equal(gconstpointer a, gconstpointer b)
{
    const WarmRun *x = a, *y = b;

    return x->vol == y->vol && x->seg == y->seg;
}

/*
 * Does the cache hold most of what @runs read?  Counted in bytes, each
 * run as its segment is (sprite_segcache_mostly_cached()): a checkpoint's
 * VM state is often one large segment and a few small ones.
 */
static bool warm_mostly_cached(GArray *runs)
{
    /* Each segment asked once: is it mostly cached? */
    g_autoptr(GHashTable) segs = g_hash_table_new(warm_seg_hash,
                                                  warm_seg_equal);
    uint64_t cached = 0, total = 0;
    guint i;

    for (i = 0; i < runs->len; i++) {
        WarmRun *r = &g_array_index(runs, WarmRun, i);
        gpointer warm;

        if (!g_hash_table_lookup_extended(segs, r, NULL, &warm)) {
            warm = GINT_TO_POINTER(
                sprite_segcache_mostly_cached(r->vol->cache, r->seg));
            g_hash_table_insert(segs, r, warm);
        }
        total += r->len;
        cached += warm ? r->len : 0;
    }
    return cached * 2 > total;
}

/*
 * The restore set that applies to checkpoint @c: its own, or for a
 * clone's checkpoint whose VM state is all its base's (the one the
 * clone was made from), the base checkpoint's.  Empty if none.
 * Called with v->lock held.
 */
static GArray *restore_set_get(SpriteVolume *v, Ckpt *c)
{
    GArray *units = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autofree char *id = NULL;
    SpriteExtent e;
    uint64_t next;
    Ckpt *bc;

    if (c->restore_units) {
        sprite_meta_get_restore_set(v->meta, c->pub.id, units, NULL);
        return units;
    }
    if (!v->base_ckpt ||
        sprite_extmap_find(c->map, SPRITE_VMSTATE_BASE, &e, &next) ||
        next != UINT64_MAX) {
        return units;
    }
    id = g_strdup_printf("%" G_GUINT64_FORMAT, v->base_ckpt);
    g_mutex_lock(&v->base->lock);
    bc = find_ckpt(v->base, id, NULL);
    if (bc && bc->restore_units) {
        sprite_meta_get_restore_set(v->base->meta, bc->pub.id, units, NULL);
    }
    g_mutex_unlock(&v->base->lock);
    return units;
}

/*
 * What to fetch after a goto to @c (see above), in order.  Without a
 * restore set, a goto that finds most of its VM state not cached (a
 * restore elsewhere) records one.  Called with v->lock held.
 */
static GArray *warm_collect_goto(SpriteVolume *v, Ckpt *c)
{
    GArray *runs = g_array_new(FALSE, FALSE, sizeof(WarmRun));
    g_autoptr(GArray) all = NULL;
    g_autoptr(GArray) units = NULL;
    guint i;

    /*
     * A checkpoint without VM state (a disk-only one) is not restored
     * with loadvm.  vm_state_size does not bound the rest: savevm in
     * mapped-ram layout writes pages at their offsets, and only some.
     */
    if (!c->pub.vm_state_size) {
        return runs;
    }
    units = restore_set_get(v, c);
    for (i = 0; i < units->len; i++) {
        uint64_t lo = SPRITE_VMSTATE_BASE +
                      g_array_index(units, uint64_t, i) * RESTORE_UNIT;

        warm_collect(v, c->map, lo, lo + RESTORE_UNIT, runs);
    }
    /* All of it: for the file store, or to see whether to record. */
    if (units->len && v->url->scheme != SPRITE_SCHEME_FILE) {
        return runs;
    }
    all = g_array_new(FALSE, FALSE, sizeof(WarmRun));
    warm_collect(v, c->map, SPRITE_VMSTATE_BASE, UINT64_MAX, all);
    if (!units->len && all->len && !warm_mostly_cached(all)) {
        __atomic_store_n(&v->rec_id, c->pub.id, __ATOMIC_RELAXED);
    }
    if (v->url->scheme == SPRITE_SCHEME_FILE) {
        g_array_append_vals(runs, all->data, all->len);
    }
    return runs;
}

/*
 * Queue the fetch of @runs that lie in segments the cache does not mostly
 * hold, up to half the cache, superseding those of an earlier goto.
 */
static void warm_queue(SpriteVolume *v, GArray *runs)
{
    unsigned gen = __atomic_add_fetch(&v->warm_gen, 1, __ATOMIC_RELAXED);
    uint64_t budget = v->cache_limit / 2;
    g_autoptr(GHashTable) cold = g_hash_table_new(warm_seg_hash,
                                                  warm_seg_equal);
    guint i;

    for (i = 0; i < runs->len && budget > 0; i++) {
        WarmRun *r = &g_array_index(runs, WarmRun, i);

        /* A segment the cache mostly has is left to the loadvm. */
        if (!g_hash_table_contains(cold, r)) {
            if (sprite_segcache_mostly_cached(r->vol->cache, r->seg)) {
                continue;
            }
            g_hash_table_add(cold, r);
        }
        r->gen = gen;
        r->len = MIN(r->len, budget);
        budget -= r->len;
        g_thread_pool_push(v->warm_pool, g_memdup2(r, sizeof(*r)), NULL);
    }
}

int sprite_volume_checkpoint_goto(SpriteVolume *v, const char *id_or_name,
                                  GError **errp)
{
    SpriteRecord r = { .kind = SPRITE_REC_GOTO };
    g_autoptr(GArray) warm = NULL;
    Ckpt *c;
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret < 0) {
        goto out;
    }
    restore_set_end(v);
    c = find_ckpt_by_id_or_name(v, id_or_name);
    if (!c) {
        g_set_error(errp, SPRITE_ERROR, ENOENT, "volume '%s' has no "
                    "checkpoint '%s'", v->url_str, id_or_name);
        ret = -ENOENT;
        goto out;
    }
    if (!c->map) {
        SpriteExtmap *m = sprite_extmap_new();

        ret = sprite_meta_load_checkpoint(v->meta, c->pub.id, m, errp);
        if (ret < 0) {
            sprite_extmap_free(m);
            goto out;
        }
        c->map = m;
    }
    r.offset = c->pub.id;
    g_array_append_val(v->records, r);
    v->pend_disk++;
    /* The checkpoint's VM state replaces any stream not yet stored. */
    g_byte_array_set_size(v->vm_buf, 0);
    v->vm_start = v->vm_scanned = 0;
    v->vm_in_place = false;
    sprite_chunker_reset(&v->vm_chunker);
    g_hash_table_remove_all(v->vm_stream);
    vm_index_load(v, c->pub.id);
    sprite_extmap_free(v->pending);
    v->pending = sprite_extmap_copy(c->map);
    v->pending_opaque = true;
    __atomic_store_n(&v->size, c->pub.size, __ATOMIC_RELAXED);
    warm = warm_collect_goto(v, c);
    if (warm->len && !v->warm_pool) {
        v->warm_pool = g_thread_pool_new(warm_run, v, WARM_THREADS, FALSE,
                                         NULL);
    }
out:
    g_mutex_unlock(&v->lock);
    if (warm && warm->len) {
        warm_queue(v, warm);
    }
    return ret;
}

static int any_key_cb(const char *key, uint64_t size, void *opaque)
{
    *(char **)opaque = g_strdup(key);
    return 1;
}

int sprite_volume_checkpoint_delete(SpriteVolume *v, const char *id,
                                    const char *name, GError **errp)
{
    SpriteRecord r = { .kind = SPRITE_REC_DELETE };
    g_autofree char *prefix = NULL;
    g_autofree char *hold = NULL;
    Ckpt *c;
    int ret;

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    c = ret < 0 ? NULL : find_ckpt(v, id, name);
    if (c) {
        r.offset = c->pub.id;
    }
    g_mutex_unlock(&v->lock);
    if (ret < 0) {
        return ret;
    }
    if (!c) {
        g_set_error(errp, SPRITE_ERROR, ENOENT, "volume '%s' has no "
                    "checkpoint '%s'", v->url_str, name ? name : id);
        return -ENOENT;
    }

    /* Volumes created from the checkpoint leave a hold on it. */
    prefix = sprite_key_holds(v->url->volume, r.offset);
    ret = sprite_objstore_list(v->os, prefix, NULL, any_key_cb, &hold, errp);
    if (ret < 0) {
        return ret;
    }
    if (hold) {
        g_set_error(errp, SPRITE_ERROR, EBUSY, "checkpoint '%s' of volume "
                    "'%s' cannot be deleted: volumes were created from it "
                    "(their holds are under %s)", name ? name : id,
                    v->url_str, prefix);
        return -EBUSY;
    }

    g_mutex_lock(&v->lock);
    ret = check_writable(v, errp);
    if (ret == 0) {
        g_autofree char *sid = g_strdup_printf("%" G_GUINT64_FORMAT,
                                               r.offset);

        c = find_ckpt(v, sid, NULL);
        if (c) {
            g_array_append_val(v->records, r);
            kick_shipper(v);
            if (v->vm_ckpt && v->vm_ckpt_id == r.offset) {
                g_hash_table_unref(v->vm_ckpt);
                v->vm_ckpt = NULL;
            }
            if (v->rec_id == r.offset) {
                /* Not to be stored for a later checkpoint of this ID. */
                __atomic_store_n(&v->rec_id, 0, __ATOMIC_RELAXED);
                g_array_set_size(v->rec_units, 0);
            }
            g_mutex_lock(&v->ckpt_lock);
            g_ptr_array_remove(v->ckpts, c);
            g_mutex_unlock(&v->ckpt_lock);
        }
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

void sprite_volume_checkpoint_list(SpriteVolume *v, SpriteCheckpoint **out,
                                   size_t *n)
{
    uint64_t seq = __atomic_load_n(&v->seq, __ATOMIC_RELAXED);
    uint64_t prev = 0;
    guint i;

    g_mutex_lock(&v->ckpt_lock);
    *n = v->ckpts->len;
    *out = g_new0(SpriteCheckpoint, v->ckpts->len);
    for (i = 0; i < v->ckpts->len; i++) {
        Ckpt *c = g_ptr_array_index(v->ckpts, i);

        (*out)[i] = c->pub;
        (*out)[i].name = g_strdup(c->pub.name);
        (*out)[i].durable = c->seq <= seq;
        (*out)[i].added_bytes = c->written - MIN(prev, c->written);
        (*out)[i].restore_set_bytes = c->restore_units * RESTORE_UNIT;
        prev = c->written;
    }
    g_mutex_unlock(&v->ckpt_lock);
}

void sprite_checkpoints_free(SpriteCheckpoint *cks, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        g_free(cks[i].name);
    }
    g_free(cks);
}

void sprite_volume_get_info(SpriteVolume *v, SpriteVolumeInfo *info)
{
    /* Immutable fields and atomics only: this never waits for a flush. */
    memset(info, 0, sizeof(*info));
    info->url = g_strdup(v->url_str);
    info->base_url = g_strdup(v->base_url);
    info->cache_dir = g_strdup(v->dir);
    info->size = __atomic_load_n(&v->size, __ATOMIC_RELAXED);
    info->generation = __atomic_load_n(&v->seq, __ATOMIC_RELAXED);
    info->data_bytes = __atomic_load_n(&v->data_bytes, __ATOMIC_RELAXED);
    info->store_bytes = __atomic_load_n(&v->store_bytes, __ATOMIC_RELAXED);
    info->writable = !v->read_only;
    info->epoch = v->lease_info.epoch;
    info->fencing = v->lease_info.fencing;
    info->pending_bytes = __atomic_load_n(&v->unshipped, __ATOMIC_RELAXED);
}

void sprite_volume_info_clear(SpriteVolumeInfo *info)
{
    g_free(info->url);
    g_free(info->base_url);
    g_free(info->cache_dir);
    memset(info, 0, sizeof(*info));
}
