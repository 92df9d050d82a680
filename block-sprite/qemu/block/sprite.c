/*
 * QEMU block driver for Sprite volumes
 *
 * Copyright (c) 2026 The Sprite authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * A Sprite volume is a virtual disk kept on S3-compatible object storage
 * (or a local directory laid out the same way) as immutable segment
 * objects, read through a local cache, with its extent map in SQLite.
 * The storage engine is libsprite; this file only translates QEMU's
 * block layer calls to it.  libsprite's calls block on disk and network,
 * so every one of them runs in the AioContext's thread pool and the
 * coroutine yields until it completes: the event loop never waits.
 */

#include "qemu/osdep.h"
#include <sprite/volume.h>

#include "block/block-io.h"
#include "block/block_int.h"
#include "block/thread-pool.h"
#include "crypto/secret.h"
#include "qapi/error.h"
#include "qapi/qapi-visit-block-core.h"
#include "qobject/qdict.h"
#include "qemu/coroutine.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "trace.h"

#define SPRITE_OPT_URL "url"
#define SPRITE_OPT_CACHE_DIR "cache-dir"
#define SPRITE_OPT_CACHE_SIZE "cache-size"
#define SPRITE_OPT_ACCESS_KEY_ID "access-key-id"
#define SPRITE_OPT_KEY_SECRET "key-secret"
#define SPRITE_OPT_REGION "region"
#define SPRITE_OPT_SSLVERIFY "sslverify"
#define SPRITE_OPT_CAFILE "cafile"
#define SPRITE_OPT_RETRY_TIMEOUT "retry-timeout"
#define SPRITE_OPT_TAKEOVER "takeover"
#define SPRITE_OPT_GC_GRACE "gc-grace"
#define SPRITE_OPT_BASE "base"
#define SPRITE_OPT_BASE_CHECKPOINT "base-checkpoint"

typedef struct BDRVSpriteState {
    SpriteVolume *vol;      /* thread-safe: libsprite serialises */
    char *url;
    uint64_t vmstate_id;    /* BlockDriverInfo.vmstate_persistent_id */
} BDRVSpriteState;

static QemuOptsList runtime_opts = {
    .name = "sprite",
    .head = QTAILQ_HEAD_INITIALIZER(runtime_opts.head),
    .desc = {
        {
            .name = SPRITE_OPT_URL,
            .type = QEMU_OPT_STRING,
            .help = "Volume URL (sprite://, sprite+http://, sprite+file://)",
        },
        {
            .name = SPRITE_OPT_CACHE_DIR,
            .type = QEMU_OPT_STRING,
            .help = "Directory for this host's cache of the volume",
        },
        {
            .name = SPRITE_OPT_CACHE_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Bound on the clean data kept in the cache",
        },
        {
            .name = SPRITE_OPT_ACCESS_KEY_ID,
            .type = QEMU_OPT_STRING,
            .help = "S3 access key ID",
        },
        {
            .name = SPRITE_OPT_KEY_SECRET,
            .type = QEMU_OPT_STRING,
            .help = "ID of the secret object holding the S3 secret key",
        },
        {
            .name = SPRITE_OPT_REGION,
            .type = QEMU_OPT_STRING,
            .help = "S3 region for request signing (default: us-east-1)",
        },
        {
            .name = SPRITE_OPT_SSLVERIFY,
            .type = QEMU_OPT_BOOL,
            .help = "Verify the server's TLS certificate (default: on)",
        },
        {
            .name = SPRITE_OPT_CAFILE,
            .type = QEMU_OPT_STRING,
            .help = "CA certificates to verify the server with",
        },
        {
            .name = SPRITE_OPT_RETRY_TIMEOUT,
            .type = QEMU_OPT_NUMBER,
            .help = "Seconds a failed object store request is retried "
                    "(default: 30)",
        },
        {
            .name = SPRITE_OPT_TAKEOVER,
            .type = QEMU_OPT_BOOL,
            .help = "Take the volume over from a writer that holds its "
                    "lease (default: off)",
        },
        {
            .name = SPRITE_OPT_GC_GRACE,
            .type = QEMU_OPT_NUMBER,
            .help = "Seconds unreferenced objects stay before they are "
                    "deleted (default: 3600)",
        },
        { /* end of list */ }
    },
};

/* ------------------------------------------------------------------ */
/* Helpers */

static void sprite_error_propagate(Error **errp, GError *err)
{
    if (err) {
        error_setg(errp, "%s", err->message);
        g_error_free(err);
    } else {
        error_setg(errp, "unknown Sprite error");
    }
}

/* Log an I/O error for the guest's request; the guest sees -errno. */
static int sprite_io_error(int ret, GError *err)
{
    if (err) {
        error_report("sprite: %s", err->message);
        g_error_free(err);
    }
    return ret;
}

/*
 * Fill @o from @opts, or from the environment for credentials that the
 * options do not give.  Strings in @o point into @opts, except
 * secret_access_key, which is returned in *@secret for the caller to
 * free.
 */
static int sprite_volume_options(QemuOpts *opts, SpriteVolumeOptions *o,
                                 char **secret, Error **errp)
{
    const char *key_secret = qemu_opt_get(opts, SPRITE_OPT_KEY_SECRET);
    uint64_t retry, grace;

    memset(o, 0, sizeof(*o));
    *secret = NULL;
    o->url = qemu_opt_get(opts, SPRITE_OPT_URL);
    if (!o->url) {
        error_setg(errp, "sprite: the '" SPRITE_OPT_URL "' option is "
                   "required");
        return -EINVAL;
    }
    o->cache_dir = qemu_opt_get(opts, SPRITE_OPT_CACHE_DIR);
    o->cache_size = qemu_opt_get_size(opts, SPRITE_OPT_CACHE_SIZE, 0);
    o->region = qemu_opt_get(opts, SPRITE_OPT_REGION);
    o->no_sslverify = !qemu_opt_get_bool(opts, SPRITE_OPT_SSLVERIFY, true);
    o->cafile = qemu_opt_get(opts, SPRITE_OPT_CAFILE);
    o->takeover = qemu_opt_get_bool(opts, SPRITE_OPT_TAKEOVER, false);
    retry = qemu_opt_get_number(opts, SPRITE_OPT_RETRY_TIMEOUT, 30);
    if (retry > UINT32_MAX / 1000) {
        error_setg(errp, "sprite: '" SPRITE_OPT_RETRY_TIMEOUT "' is too "
                   "large");
        return -EINVAL;
    }
    /* 0 means no retries at all; the library's 0 means its default. */
    o->retry_ms = retry ? retry * 1000 : UINT_MAX;
    grace = qemu_opt_get_number(opts, SPRITE_OPT_GC_GRACE,
                                SPRITE_DEFAULT_GC_GRACE_MS / 1000);
    if (grace > UINT32_MAX) {
        error_setg(errp, "sprite: '" SPRITE_OPT_GC_GRACE "' is too large");
        return -EINVAL;
    }
    /* Likewise: 0 means none. */
    o->gc_grace_ms = grace ? (int64_t)grace * 1000 : -1;
    o->access_key_id = qemu_opt_get(opts, SPRITE_OPT_ACCESS_KEY_ID);

    if (!o->access_key_id && !key_secret) {
        o->access_key_id = g_getenv("AWS_ACCESS_KEY_ID");
        *secret = g_strdup(g_getenv("AWS_SECRET_ACCESS_KEY"));
    } else if (!o->access_key_id || !key_secret) {
        error_setg(errp, "sprite: '" SPRITE_OPT_ACCESS_KEY_ID "' and '"
                   SPRITE_OPT_KEY_SECRET "' must be given together");
        return -EINVAL;
    } else {
        *secret = qcrypto_secret_lookup_as_utf8(key_secret, errp);
        if (!*secret) {
            return -EINVAL;
        }
    }
    o->secret_access_key = *secret;
    return 0;
}

static void sprite_parse_filename(const char *filename, QDict *options,
                                  Error **errp)
{
    if (qdict_haskey(options, SPRITE_OPT_URL)) {
        error_setg(errp, "sprite: a filename and the '" SPRITE_OPT_URL
                   "' option cannot be used together");
        return;
    }
    qdict_put_str(options, SPRITE_OPT_URL, filename);
}

/* ------------------------------------------------------------------ */
/* Open and close */

static int sprite_open(BlockDriverState *bs, QDict *options, int flags,
                       Error **errp)
{
    BDRVSpriteState *s = bs->opaque;
    SpriteVolumeOptions o;
    g_autofree char *secret = NULL;
    GError *err = NULL;
    QemuOpts *opts;
    int ret;

    opts = qemu_opts_create(&runtime_opts, NULL, 0, &error_abort);
    if (!qemu_opts_absorb_qdict(opts, options, errp)) {
        ret = -EINVAL;
        goto out;
    }
    ret = sprite_volume_options(opts, &o, &secret, errp);
    if (ret < 0) {
        goto out;
    }
    o.read_only = !(flags & BDRV_O_RDWR);

    ret = sprite_volume_open(&o, &s->vol, &err);
    if (ret < 0) {
        sprite_error_propagate(errp, err);
        goto out;
    }
    /* A new name for the VM state area each time it is opened. */
    s->vmstate_id = ((uint64_t)g_random_int() << 32 | g_random_int()) | 1;
    s->url = g_strdup(o.url);
    trace_sprite_open(s, s->url, o.read_only);
    if (!o.read_only) {
        SpriteVolumeInfo info;

        sprite_volume_get_info(s->vol, &info);
        if (!info.fencing) {
            warn_report("sprite: the object store of '%s' ignores "
                        "conditional writes: a second writer cannot be "
                        "fenced off", info.url);
        }
        sprite_volume_info_clear(&info);
    }

    /*
     * FUA (writethrough) is ours to do: the block layer's emulation, a
     * flush after the write, skips the flush when no write completed
     * since the last one, which a write still in flight has not.
     */
    bs->supported_write_flags = BDRV_REQ_FUA;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA;
    ret = 0;
out:
    qemu_opts_del(opts);
    return ret;
}

static void sprite_close(BlockDriverState *bs)
{
    BDRVSpriteState *s = bs->opaque;

    sprite_volume_close(s->vol);
    g_free(s->url);
}

static void sprite_refresh_limits(BlockDriverState *bs, Error **errp)
{
    /*
     * libsprite reads and writes at byte granularity, but block status
     * must come in whole sectors: qemu-img convert and others round a
     * status shorter than a sector up to one.  The block layer does the
     * read-modify-write of unaligned requests.
     */
    bs->bl.request_alignment = BDRV_SECTOR_SIZE;
}

static void sprite_refresh_filename(BlockDriverState *bs)
{
    BDRVSpriteState *s = bs->opaque;

    pstrcpy(bs->exact_filename, sizeof(bs->exact_filename), s->url);
}

/* ------------------------------------------------------------------ */
/* I/O, run in the thread pool */

typedef enum SpriteOp {
    SPRITE_OP_READ,
    SPRITE_OP_WRITE,
    SPRITE_OP_WRITE_ZEROES,
    SPRITE_OP_DISCARD,
    SPRITE_OP_FLUSH,
    SPRITE_OP_TRUNCATE,
    SPRITE_OP_BLOCK_STATUS,
    SPRITE_OP_SAVE_VMSTATE,
    SPRITE_OP_LOAD_VMSTATE,
} SpriteOp;

typedef struct SpriteRequest {
    SpriteVolume *vol;
    SpriteOp op;
    uint64_t offset;
    uint64_t bytes;
    QEMUIOVector *qiov;
    bool fua;               /* writes: flush before completing */
    uint64_t pnum;          /* block status */
    unsigned status;
    GError *err;
} SpriteRequest;

static int sprite_worker_op(SpriteRequest *r)
{
    switch (r->op) {
    case SPRITE_OP_READ:
        return sprite_volume_readv(r->vol, r->offset, r->bytes,
                                   r->qiov->iov, r->qiov->niov, &r->err);
    case SPRITE_OP_WRITE:
        return sprite_volume_writev(r->vol, r->offset, r->bytes,
                                    r->qiov->iov, r->qiov->niov, &r->err);
    case SPRITE_OP_WRITE_ZEROES:
        return sprite_volume_write_zeroes(r->vol, r->offset, r->bytes,
                                          &r->err);
    case SPRITE_OP_DISCARD:
        return sprite_volume_discard(r->vol, r->offset, r->bytes, &r->err);
    case SPRITE_OP_FLUSH:
        return sprite_volume_flush(r->vol, &r->err);
    case SPRITE_OP_TRUNCATE:
        return sprite_volume_truncate(r->vol, r->offset, &r->err);
    case SPRITE_OP_BLOCK_STATUS:
        return sprite_volume_block_status(r->vol, r->offset, r->bytes,
                                          &r->pnum, &r->status, &r->err);
    case SPRITE_OP_SAVE_VMSTATE:
        return sprite_volume_vmstate_writev(r->vol, r->offset, r->bytes,
                                            r->qiov->iov, r->qiov->niov,
                                            &r->err);
    case SPRITE_OP_LOAD_VMSTATE:
        return sprite_volume_vmstate_readv(r->vol, r->offset, r->bytes,
                                           r->qiov->iov, r->qiov->niov,
                                           &r->err);
    }
    g_assert_not_reached();
}

static int sprite_worker(void *opaque)
{
    SpriteRequest *r = opaque;
    int ret = sprite_worker_op(r);

    if (ret == 0 && r->fua) {
        ret = sprite_volume_flush(r->vol, &r->err);
    }
    return ret;
}

static int coroutine_fn sprite_co_submit(BlockDriverState *bs,
                                         SpriteRequest *r)
{
    BDRVSpriteState *s = bs->opaque;
    int ret;

    r->vol = s->vol;
    trace_sprite_co_request(s, r->op, r->offset, r->bytes);
    ret = thread_pool_submit_co(sprite_worker, r);
    trace_sprite_co_request_done(s, r->op, r->offset, r->bytes, ret);
    return ret;
}

/*
 * libsprite copies to and from the caller's buffers with its locks held.
 * Guest RAM may be backed by userfaultfd while a snapshot loads on demand
 * (migration/ram-lazy.c), and the faults are served by reading this very
 * volume: touch each page first, so that none is taken under those locks.
 */
static void sprite_fault_in(QEMUIOVector *qiov)
{
    uintptr_t page_size = qemu_real_host_page_size();
    int i;

    for (i = 0; qiov && i < qiov->niov; i++) {
        uintptr_t p = (uintptr_t)qiov->iov[i].iov_base;
        uintptr_t end = p + qiov->iov[i].iov_len;

        for (; p < end; p = QEMU_ALIGN_DOWN(p, page_size) + page_size) {
            (void)*(volatile uint8_t *)p;   /* volatile: the read is it */
        }
    }
}

/* sprite_co_io() for buffers that sprite_fault_in() touched already. */
static int coroutine_fn sprite_co_io_faulted(BlockDriverState *bs,
                                             SpriteOp op, int64_t offset,
                                             int64_t bytes,
                                             QEMUIOVector *qiov,
                                             BdrvRequestFlags flags)
{
    SpriteRequest r = {
        .op = op, .offset = offset, .bytes = bytes, .qiov = qiov,
        .fua = flags & BDRV_REQ_FUA,
    };
    int ret = sprite_co_submit(bs, &r);

    return ret < 0 ? sprite_io_error(ret, r.err) : 0;
}

static int coroutine_fn sprite_co_io(BlockDriverState *bs, SpriteOp op,
                                     int64_t offset, int64_t bytes,
                                     QEMUIOVector *qiov,
                                     BdrvRequestFlags flags)
{
    sprite_fault_in(qiov);
    return sprite_co_io_faulted(bs, op, offset, bytes, qiov, flags);
}

/*
 * Reads and writes up to this size are copied from the cache or into the
 * log from the coroutine: a larger copy would hold up the event loop
 * (and the kernel may make a writer sleep to throttle dirty pages).
 */
#define SPRITE_CO_IO_MAX (1 * MiB)
/* The first and the longest pause before trying the volume lock again. */
#define SPRITE_CO_RETRY_MIN_NS (10 * SCALE_US)
#define SPRITE_CO_RETRY_MAX_NS (1 * SCALE_MS)

static int coroutine_fn GRAPH_RDLOCK
sprite_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                 QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVSpriteState *s = bs->opaque;

    /*
     * Data written here or already in the cache is read right here, like
     * a local file: only what needs the network (or a wait for a lock),
     * and large reads, go to the thread pool.
     */
    sprite_fault_in(qiov);
    if (bytes <= SPRITE_CO_IO_MAX &&
        sprite_volume_try_readv(s->vol, offset, bytes, qiov->iov,
                                qiov->niov) == 0) {
        return 0;
    }
    return sprite_co_io_faulted(bs, SPRITE_OP_READ, offset, bytes, qiov, 0);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                  QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVSpriteState *s = bs->opaque;
    int64_t pause = SPRITE_CO_RETRY_MIN_NS;
    SpriteWrite w;
    int ret = -EAGAIN;

    /*
     * As for reads: the bytes go into the local log right here, as into a
     * local file.  Only a write that must wait (for the lock, a seal or an
     * upload) goes to the thread pool.  One whose mapping found the lock
     * busy tries again after a pause, here: in the pool it could queue
     * behind writes that wait for a seal, which waits for it.
     */
    sprite_fault_in(qiov);
    if (bytes <= SPRITE_CO_IO_MAX) {
        ret = sprite_volume_try_writev(s->vol, offset, bytes, qiov->iov,
                                       qiov->niov, &w);
    }
    while (ret == -EINPROGRESS) {
        qemu_co_sleep_ns(QEMU_CLOCK_REALTIME, pause);
        pause = MIN(pause * 2, SPRITE_CO_RETRY_MAX_NS);
        ret = sprite_volume_try_write_end(s->vol, &w);
    }
    if (ret == 0) {
        return flags & BDRV_REQ_FUA ?
            sprite_co_io_faulted(bs, SPRITE_OP_FLUSH, 0, 0, NULL, 0) : 0;
    }
    return sprite_co_io_faulted(bs, SPRITE_OP_WRITE, offset, bytes, qiov,
                                flags);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                        BdrvRequestFlags flags)
{
    return sprite_co_io(bs, SPRITE_OP_WRITE_ZEROES, offset, bytes, NULL,
                        flags);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return sprite_co_io(bs, SPRITE_OP_DISCARD, offset, bytes, NULL, 0);
}

static int coroutine_fn GRAPH_RDLOCK sprite_co_flush(BlockDriverState *bs)
{
    return sprite_co_io(bs, SPRITE_OP_FLUSH, 0, 0, NULL, 0);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                   PreallocMode prealloc, BdrvRequestFlags flags,
                   Error **errp)
{
    SpriteRequest r = { .op = SPRITE_OP_TRUNCATE, .offset = offset };
    int ret;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "sprite: unsupported preallocation mode '%s'",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    ret = sprite_co_submit(bs, &r);
    if (ret < 0) {
        sprite_error_propagate(errp, r.err);
    }
    return ret;
}

static int64_t coroutine_fn GRAPH_RDLOCK
sprite_co_getlength(BlockDriverState *bs)
{
    BDRVSpriteState *s = bs->opaque;

    return sprite_volume_size(s->vol);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                       int64_t bytes, int64_t *pnum, int64_t *map,
                       BlockDriverState **file)
{
    SpriteRequest r = {
        .op = SPRITE_OP_BLOCK_STATUS, .offset = offset, .bytes = bytes,
    };
    int ret = sprite_co_submit(bs, &r);

    if (ret < 0) {
        return sprite_io_error(ret, r.err);
    }
    /*
     * The block layer wants whole sectors.  Volumes written through QEMU
     * only have sector-aligned extents, but libsprite allows any: a
     * sector of mixed status is reported as data, which is always true.
     */
    if (r.pnum < BDRV_SECTOR_SIZE) {
        r.pnum = BDRV_SECTOR_SIZE;
        r.status = SPRITE_STATUS_DATA;
    }
    *pnum = QEMU_ALIGN_DOWN(r.pnum, BDRV_SECTOR_SIZE);
    *map = offset;
    *file = bs;
    ret = BDRV_BLOCK_OFFSET_VALID;
    if (r.status & SPRITE_STATUS_DATA) {
        ret |= BDRV_BLOCK_DATA;
    }
    if (r.status & SPRITE_STATUS_ZERO) {
        ret |= BDRV_BLOCK_ZERO;
    }
    return ret;
}

static int GRAPH_RDLOCK sprite_has_zero_init(BlockDriverState *bs)
{
    BDRVSpriteState *s = bs->opaque;
    SpriteVolumeInfo info;
    int ret;

    /* A new volume reads as zeroes, unless it was created from a base. */
    sprite_volume_get_info(s->vol, &info);
    ret = info.base_url == NULL;
    sprite_volume_info_clear(&info);
    return ret;
}

static ImageInfoSpecific * GRAPH_RDLOCK
sprite_get_specific_info(BlockDriverState *bs, Error **errp)
{
    BDRVSpriteState *s = bs->opaque;
    ImageInfoSpecific *spec = g_new0(ImageInfoSpecific, 1);
    ImageInfoSpecificSprite *d = g_new0(ImageInfoSpecificSprite, 1);
    SpriteCheckpointInfoList **tail;
    SpriteVolumeInfo info;
    SpriteCheckpoint *cks;
    size_t i, n;

    sprite_volume_get_info(s->vol, &info);
    d->url = g_strdup(info.url);
    d->generation = info.generation;
    d->base = g_strdup(info.base_url);
    d->data_bytes = info.data_bytes;
    d->store_bytes = info.store_bytes;
    d->cache_dir = g_strdup(info.cache_dir);
    if (info.writable) {
        d->has_epoch = true;
        d->epoch = info.epoch;
        d->has_fencing = true;
        d->fencing = info.fencing;
    }
    d->pending_bytes = info.pending_bytes;
    sprite_volume_info_clear(&info);

    sprite_volume_checkpoint_list(s->vol, &cks, &n);
    tail = &d->checkpoints;
    for (i = 0; i < n; i++) {
        SpriteCheckpointInfo *ci = g_new0(SpriteCheckpointInfo, 1);

        ci->id = g_strdup_printf("%" PRIu64, cks[i].id);
        ci->name = g_strdup(cks[i].name);
        ci->durable = cks[i].durable;
        ci->added_bytes = cks[i].added_bytes;
        ci->restore_set_bytes = cks[i].restore_set_bytes;
        QAPI_LIST_APPEND(tail, ci);
    }
    sprite_checkpoints_free(cks, n);

    spec->type = IMAGE_INFO_SPECIFIC_KIND_SPRITE;
    spec->u.sprite.data = d;
    return spec;
}

static int64_t coroutine_fn GRAPH_RDLOCK
sprite_co_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVSpriteState *s = bs->opaque;
    SpriteVolumeInfo info;
    int64_t ret;

    sprite_volume_get_info(s->vol, &info);
    ret = info.store_bytes;
    sprite_volume_info_clear(&info);
    return ret;
}

/* ------------------------------------------------------------------ */
/* Checkpoints: internal snapshots and the VM state */

static int coroutine_fn
sprite_co_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVSpriteState *s = bs->opaque;

    /*
     * Taking or going to a checkpoint leaves the VM state area reading as
     * the checkpoint's (copy-on-write, as the disk): savevm writes RAM at
     * fixed offsets there, and only what changed since.
     */
    bdi->vmstate_persistent_id = s->vmstate_id;
    return 0;
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_save_vmstate(BlockDriverState *bs, QEMUIOVector *qiov, int64_t pos)
{
    return sprite_co_io(bs, SPRITE_OP_SAVE_VMSTATE, pos, qiov->size, qiov,
                        0);
}

static int coroutine_fn GRAPH_RDLOCK
sprite_co_load_vmstate(BlockDriverState *bs, QEMUIOVector *qiov, int64_t pos)
{
    return sprite_co_io(bs, SPRITE_OP_LOAD_VMSTATE, pos, qiov->size, qiov,
                        0);
}

/*
 * Taking a checkpoint, or going to one, changes only metadata in memory
 * (libsprite ships it with the next upload), so these run in the main
 * loop, with the node drained by the caller.
 */
static int GRAPH_RDLOCK
sprite_snapshot_create(BlockDriverState *bs, QEMUSnapshotInfo *sn)
{
    BDRVSpriteState *s = bs->opaque;
    SpriteCheckpoint ck = {
        .name = sn->name,
        .vm_state_size = sn->vm_state_size,
        .date_sec = sn->date_sec,
        .date_nsec = sn->date_nsec,
        .vm_clock_nsec = sn->vm_clock_nsec,
        .icount = (int64_t)sn->icount,
    };
    GError *err = NULL;
    int ret;

    ret = sprite_volume_checkpoint_create(s->vol, &ck, &err);
    trace_sprite_snapshot(s, "create", sn->name, ret);
    if (ret < 0) {
        return sprite_io_error(ret, err);
    }
    snprintf(sn->id_str, sizeof(sn->id_str), "%" PRIu64, ck.id);
    return 0;
}

static int GRAPH_UNLOCKED
sprite_snapshot_goto(BlockDriverState *bs, const char *snapshot_id)
{
    BDRVSpriteState *s = bs->opaque;
    GError *err = NULL;
    int ret;

    ret = sprite_volume_checkpoint_goto(s->vol, snapshot_id, &err);
    trace_sprite_snapshot(s, "goto", snapshot_id, ret);
    if (ret < 0) {
        return sprite_io_error(ret, err);
    }
    /* A checkpoint taken before the volume grew is smaller. */
    bs->total_sectors = sprite_volume_size(s->vol) / BDRV_SECTOR_SIZE;
    return 0;
}

static int GRAPH_RDLOCK
sprite_snapshot_delete(BlockDriverState *bs, const char *snapshot_id,
                       const char *name, Error **errp)
{
    BDRVSpriteState *s = bs->opaque;
    GError *err = NULL;
    int ret;

    ret = sprite_volume_checkpoint_delete(s->vol, snapshot_id, name, &err);
    trace_sprite_snapshot(s, "delete", name ? name : snapshot_id, ret);
    if (ret < 0) {
        sprite_error_propagate(errp, err);
    }
    return ret;
}

static int GRAPH_RDLOCK
sprite_snapshot_list(BlockDriverState *bs, QEMUSnapshotInfo **psn)
{
    BDRVSpriteState *s = bs->opaque;
    QEMUSnapshotInfo *sn;
    SpriteCheckpoint *cks;
    size_t i, n;

    sprite_volume_checkpoint_list(s->vol, &cks, &n);
    sn = g_new0(QEMUSnapshotInfo, n);
    for (i = 0; i < n; i++) {
        snprintf(sn[i].id_str, sizeof(sn[i].id_str), "%" PRIu64, cks[i].id);
        pstrcpy(sn[i].name, sizeof(sn[i].name), cks[i].name);
        sn[i].vm_state_size = cks[i].vm_state_size;
        sn[i].date_sec = cks[i].date_sec;
        sn[i].date_nsec = cks[i].date_nsec;
        sn[i].vm_clock_nsec = cks[i].vm_clock_nsec;
        sn[i].icount = cks[i].icount;
    }
    sprite_checkpoints_free(cks, n);
    *psn = sn;
    return n;
}

/* ------------------------------------------------------------------ */
/* qemu-img create */

static QemuOptsList sprite_create_opts = {
    .name = "sprite-create-opts",
    .head = QTAILQ_HEAD_INITIALIZER(sprite_create_opts.head),
    .desc = {
        {
            .name = BLOCK_OPT_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Virtual disk size (0 or absent with a base: the "
                    "base's size)",
        },
        {
            .name = SPRITE_OPT_BASE,
            .type = QEMU_OPT_STRING,
            .help = "URL of a volume to clone: only the difference from it "
                    "is stored",
        },
        {
            .name = SPRITE_OPT_BASE_CHECKPOINT,
            .type = QEMU_OPT_STRING,
            .help = "Checkpoint (ID or name) of the base to clone instead "
                    "of its current state, VM state included",
        },
        { /* end of list */ }
    }
};

typedef struct SpriteCreate {
    SpriteVolumeOptions o;
    uint64_t size;
    const char *base;
    const char *base_checkpoint;
    GError *err;
} SpriteCreate;

static int sprite_create_worker(void *opaque)
{
    SpriteCreate *c = opaque;

    return sprite_volume_create(&c->o, c->size, c->base, c->base_checkpoint,
                                &c->err);
}

static int coroutine_fn GRAPH_UNLOCKED
sprite_co_create_opts(BlockDriver *drv, const char *filename,
                      QemuOpts *opts, Error **errp)
{
    SpriteCreate c = { 0 };
    g_autofree char *base = qemu_opt_get_del(opts, SPRITE_OPT_BASE);
    g_autofree char *base_ckpt = qemu_opt_get_del(opts,
                                                  SPRITE_OPT_BASE_CHECKPOINT);
    int ret;

    c.size = ROUND_UP(qemu_opt_get_size_del(opts, BLOCK_OPT_SIZE, 0),
                      BDRV_SECTOR_SIZE);
    c.base = base;
    c.base_checkpoint = base_ckpt;
    c.o.url = filename;
    /* Creating needs no cache; credentials come from the environment. */
    c.o.access_key_id = g_getenv("AWS_ACCESS_KEY_ID");
    c.o.secret_access_key = g_getenv("AWS_SECRET_ACCESS_KEY");
    c.o.read_only = true;

    ret = thread_pool_submit_co(sprite_create_worker, &c);
    if (ret < 0) {
        sprite_error_propagate(errp, c.err);
    }
    return ret;
}

static const char *const sprite_strong_runtime_opts[] = {
    SPRITE_OPT_URL,

    NULL
};

/*
 * One driver per URL scheme, as for nbd, so that a filename with any of
 * them finds the driver; they share the QAPI name "sprite".
 */
#define SPRITE_DRIVER(proto)                                            \
    {                                                                   \
        .format_name                = "sprite",                         \
        .protocol_name              = proto,                            \
        .instance_size              = sizeof(BDRVSpriteState),          \
        .bdrv_parse_filename        = sprite_parse_filename,            \
        .bdrv_open                  = sprite_open,                      \
        .bdrv_close                 = sprite_close,                     \
        .bdrv_co_create_opts        = sprite_co_create_opts,            \
        .create_opts                = &sprite_create_opts,              \
        .bdrv_refresh_limits        = sprite_refresh_limits,            \
        .bdrv_refresh_filename      = sprite_refresh_filename,          \
        .bdrv_has_zero_init         = sprite_has_zero_init,             \
        .bdrv_co_getlength          = sprite_co_getlength,              \
        .bdrv_co_get_allocated_file_size =                              \
            sprite_co_get_allocated_file_size,                          \
        .bdrv_get_specific_info     = sprite_get_specific_info,         \
        .bdrv_co_truncate           = sprite_co_truncate,               \
        .bdrv_co_preadv             = sprite_co_preadv,                 \
        .bdrv_co_pwritev            = sprite_co_pwritev,                \
        .bdrv_co_pwrite_zeroes      = sprite_co_pwrite_zeroes,          \
        .bdrv_co_pdiscard           = sprite_co_pdiscard,               \
        .bdrv_co_flush_to_disk      = sprite_co_flush,                  \
        .bdrv_co_block_status       = sprite_co_block_status,           \
        .bdrv_co_get_info           = sprite_co_get_info,               \
        .bdrv_co_save_vmstate       = sprite_co_save_vmstate,           \
        .bdrv_co_load_vmstate       = sprite_co_load_vmstate,           \
        .bdrv_snapshot_create       = sprite_snapshot_create,           \
        .bdrv_snapshot_goto         = sprite_snapshot_goto,             \
        .bdrv_snapshot_delete       = sprite_snapshot_delete,           \
        .bdrv_snapshot_list         = sprite_snapshot_list,             \
        .strong_runtime_opts        = sprite_strong_runtime_opts,       \
    }

static BlockDriver bdrv_sprite[] = {
    SPRITE_DRIVER("sprite"),
    SPRITE_DRIVER("sprite+http"),
    SPRITE_DRIVER("sprite+file"),
};

static void bdrv_sprite_init(void)
{
    for (size_t i = 0; i < ARRAY_SIZE(bdrv_sprite); i++) {
        bdrv_register(&bdrv_sprite[i]);
    }
}

block_init(bdrv_sprite_init);
