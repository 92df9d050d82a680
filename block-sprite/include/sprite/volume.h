/*
 * Sprite volume API: what the QEMU driver (and any other user) sees
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A volume is a virtual disk of a fixed (growable) size stored on an
 * object store as immutable segment objects, with a local cache directory
 * and a SQLite extent map (see block-sprite/store/segment.h for the
 * on-store format and docs/format.md for a summary).
 *
 * Threading: every function may be called from any thread, and calls may
 * run concurrently; the volume serialises what needs it.  Calls block on
 * disk and network I/O: the QEMU glue runs them in worker threads.
 *
 * Errors: functions return 0 or a negative errno and set *errp (a GError
 * in SPRITE_ERROR whose code is the errno) to a message fit for a user.
 */
#ifndef SPRITE_VOLUME_H
#define SPRITE_VOLUME_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "sprite/objstore.h"

G_BEGIN_DECLS

/* Reads and writes need not be aligned; this is the granularity at which
 * the extent map tracks data, and the size QEMU should prefer. */
#define SPRITE_SECTOR_SIZE 512

typedef struct SpriteVolume SpriteVolume;

typedef struct SpriteVolumeOptions {
    const char *url;                /* required: a volume URL */
    const char *cache_dir;          /* NULL: ${XDG_CACHE_HOME:-~/.cache}/sprite */
    uint64_t cache_size;            /* 0: SPRITE_DEFAULT_CACHE_SIZE */
    const char *access_key_id;      /* S3 credentials, or NULL */
    const char *secret_access_key;
    const char *region;             /* NULL: us-east-1 */
    bool no_sslverify;              /* https: do not verify the peer */
    const char *cafile;             /* https: CA bundle, or NULL */
    unsigned retry_ms;              /* retry budget of a request, see
                                     * SpriteObjstoreConfig.retry_ms */
    bool takeover;                  /* take the lease even if held */
    unsigned lease_ms;              /* 0: 30 s (see volume/lease.h) */
    bool read_only;
} SpriteVolumeOptions;

#define SPRITE_DEFAULT_CACHE_SIZE (1ULL << 30)

/*
 * Create volume @o->url of @size bytes (a multiple of SPRITE_SECTOR_SIZE).
 * With @base_url, the new volume reads as a copy of that volume as it is
 * now (its newest flushed state); this stores only a reference, whatever
 * the size (which may be larger than the base's, not smaller; 0 means the
 * base's).  Fails with -EEXIST if the volume exists.
 */
int sprite_volume_create(const SpriteVolumeOptions *o, uint64_t size,
                         const char *base_url, GError **errp);

/*
 * Open a volume.  On success *@out is the volume, to be closed with
 * sprite_volume_close().  A writer takes the volume's lease: this fails
 * with -EBUSY, naming the holder, if another writer holds it, unless
 * @o->takeover.
 */
int sprite_volume_open(const SpriteVolumeOptions *o, SpriteVolume **out,
                       GError **errp);

/* Flush (best effort; report with sprite_volume_flush() first if the
 * outcome matters) and free @v. */
void sprite_volume_close(SpriteVolume *v);

/* The size in bytes.  Never blocks (safe from an event loop). */
uint64_t sprite_volume_size(SpriteVolume *v);

/* Read @len bytes at @offset into @iov (which holds at least @len). */
int sprite_volume_readv(SpriteVolume *v, uint64_t offset, uint64_t len,
                        const struct iovec *iov, int iovcnt, GError **errp);

/* Write @len bytes at @offset from @iov.  Acknowledged once in the local
 * cache: durable on the object store only after the next flush. */
int sprite_volume_writev(SpriteVolume *v, uint64_t offset, uint64_t len,
                         const struct iovec *iov, int iovcnt, GError **errp);

/* Make [@offset, @offset + @len) read as zeroes, storing no data. */
int sprite_volume_write_zeroes(SpriteVolume *v, uint64_t offset,
                               uint64_t len, GError **errp);

/* Drop the data of [@offset, @offset + @len): it reads as zeroes
 * afterwards and its space is released. */
int sprite_volume_discard(SpriteVolume *v, uint64_t offset, uint64_t len,
                          GError **errp);

/* Return once every write acknowledged before the call, and the metadata
 * that maps it, is durable on the object store. */
int sprite_volume_flush(SpriteVolume *v, GError **errp);

/* Grow the volume to @size bytes (shrinking is refused with -ENOTSUP). */
int sprite_volume_truncate(SpriteVolume *v, uint64_t size, GError **errp);

typedef enum SpriteBlockStatus {
    SPRITE_STATUS_DATA = 1 << 0,        /* bytes are stored (here or in a base) */
    SPRITE_STATUS_ZERO = 1 << 1,        /* reads as zeroes */
    SPRITE_STATUS_ALLOCATED = 1 << 2,   /* decided by this volume, not a base */
} SpriteBlockStatus;

/*
 * Status of the bytes from @offset: sets *@pnum to the number of bytes
 * (> 0, at most @len) that share the status returned in *@status.
 */
int sprite_volume_block_status(SpriteVolume *v, uint64_t offset,
                               uint64_t len, uint64_t *pnum,
                               unsigned *status, GError **errp);

typedef struct SpriteVolumeInfo {
    char *url;              /* canonical URL */
    char *base_url;         /* NULL without a base */
    char *cache_dir;        /* this volume's cache directory */
    uint64_t size;
    uint64_t generation;    /* newest durable segment */
    uint64_t data_bytes;    /* virtual bytes mapped to data of this volume */
    uint64_t store_bytes;   /* bytes of this volume's objects on the store */
    bool writable;          /* open for writing, with a lease: */
    uint64_t epoch;         /*   the lease's epoch */
    bool fencing;           /*   the store honours conditional writes */
} SpriteVolumeInfo;

/* Fill @info; free its strings with sprite_volume_info_clear().  Never
 * blocks (safe from an event loop). */
void sprite_volume_get_info(SpriteVolume *v, SpriteVolumeInfo *info);
void sprite_volume_info_clear(SpriteVolumeInfo *info);

G_END_DECLS

#endif /* SPRITE_VOLUME_H */
