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
    int64_t gc_grace_ms;            /* how long garbage stays before it is
                                     * deleted (see sprite_volume_gc());
                                     * 0: SPRITE_DEFAULT_GC_GRACE_MS;
                                     * negative: none (tests) */
    bool read_only;
} SpriteVolumeOptions;

#define SPRITE_DEFAULT_CACHE_SIZE (1ULL << 30)
#define SPRITE_DEFAULT_GC_GRACE_MS (3600 * 1000)

/*
 * Create volume @o->url of @size bytes (a multiple of SPRITE_SECTOR_SIZE).
 * With @base_url, the new volume reads as a copy of that volume as it is
 * now (its newest flushed state); this stores only a reference, whatever
 * the size (which may be larger than the base's, not smaller; 0 means the
 * base's).  With @base_checkpoint too (an ID or name), it reads as that
 * checkpoint of the base instead, and has a checkpoint of the same name
 * that restores the checkpoint's VM state: a VM started from the new
 * volume with loadvm resumes where the checkpoint was taken.  Fails with
 * -EEXIST if the volume exists.
 */
int sprite_volume_create(const SpriteVolumeOptions *o, uint64_t size,
                         const char *base_url, const char *base_checkpoint,
                         GError **errp);

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

/*
 * Read like sprite_volume_readv() if that needs no network request, no
 * check of cached data and no wait for a lock (data written here, or
 * read and checked before): else -EAGAIN, or another -errno, having
 * read nothing that counts; the caller then calls sprite_volume_readv().
 * For callers on an event loop: it costs local file reads only.
 */
int sprite_volume_try_readv(SpriteVolume *v, uint64_t offset, uint64_t len,
                            const struct iovec *iov, int iovcnt);

/* Write @len bytes at @offset from @iov.  Acknowledged once in the local
 * cache: durable on the object store only after the next flush. */
int sprite_volume_writev(SpriteVolume *v, uint64_t offset, uint64_t len,
                         const struct iovec *iov, int iovcnt, GError **errp);

/*
 * Write like sprite_volume_writev(), for callers on an event loop: the
 * volume's lock is only tried and nothing waits for an upload, so the
 * call costs a local file write of @len bytes.  Returns 0 when done; any
 * -errno but -EINPROGRESS (-EAGAIN among them) having written nothing
 * that counts, and the caller then calls sprite_volume_writev(); or
 * -EINPROGRESS when the bytes are in the log but the lock was busy for
 * mapping them: the caller then calls sprite_volume_try_write_end() with
 * @w, after a pause, until it returns something else.  Meanwhile a flush
 * of @v waits (its seal does), so the caller must not wait for one.  Two
 * writes of the same bytes in flight at once end in either order.
 */
typedef struct SpriteWrite {    /* for sprite_volume_try_write_end() */
    uint64_t offset;
    uint64_t len;
    uint64_t data_off;
    int fd;
    int ret;
} SpriteWrite;

int sprite_volume_try_writev(SpriteVolume *v, uint64_t offset, uint64_t len,
                             const struct iovec *iov, int iovcnt,
                             SpriteWrite *w);
int sprite_volume_try_write_end(SpriteVolume *v, const SpriteWrite *w);

/* Make [@offset, @offset + @len) read as zeroes, storing no data. */
int sprite_volume_write_zeroes(SpriteVolume *v, uint64_t offset,
                               uint64_t len, GError **errp);

/* Drop the data of [@offset, @offset + @len): it reads as zeroes
 * afterwards and its space is released. */
int sprite_volume_discard(SpriteVolume *v, uint64_t offset, uint64_t len,
                          GError **errp);

/*
 * Return once every write to the disk acknowledged before the call, and
 * the metadata that maps it, is durable on the object store.  VM state
 * and checkpoint records that no disk write follows are left to the
 * volume's shipper thread, which uploads them at once (see
 * SpriteCheckpoint.durable).
 */
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

/*
 * Checkpoints.  A checkpoint freezes the volume as it is (every write
 * made before it, flushed or not) together with the VM state written
 * before it through sprite_volume_vmstate_writev(); going to it makes
 * the volume read as it did then, VM state included.  Taking and going
 * to a checkpoint are metadata operations in memory (no data is copied);
 * the checkpoint becomes durable on the object store with the next
 * upload (see SpriteCheckpoint.durable and sprite_volume_flush()).
 */

/* The VM state area: savevm's stream, at most this many bytes. */
#define SPRITE_VMSTATE_SIZE (1ULL << 61)

typedef struct SpriteCheckpoint {
    uint64_t id;                /* > 0, assigned when taken */
    char *name;                 /* unique within the volume */
    uint64_t size;              /* the disk's size then */
    uint64_t vm_state_size;     /* bytes of VM state (0: disk only) */
    int64_t date_sec;           /* wall clock when taken */
    int64_t date_nsec;
    int64_t vm_clock_nsec;      /* guest clock when taken */
    int64_t icount;             /* instruction count, or -1 */
    uint64_t added_bytes;       /* data stored since the previous one */
    uint64_t restore_set_bytes; /* VM state that a restore elsewhere reads
                                 * first, as recorded by one (0: none yet);
                                 * fetched ahead by the next goto */
    bool durable;               /* on the object store */
} SpriteCheckpoint;

/* Write or read VM state at byte @pos of the VM state area. */
int sprite_volume_vmstate_writev(SpriteVolume *v, uint64_t pos, uint64_t len,
                                 const struct iovec *iov, int iovcnt,
                                 GError **errp);
int sprite_volume_vmstate_readv(SpriteVolume *v, uint64_t pos, uint64_t len,
                                const struct iovec *iov, int iovcnt,
                                GError **errp);

/*
 * Take checkpoint @ck->name with the VM state area as written so far
 * (@ck->vm_state_size, what savevm wrote for it, is recorded as given).
 * The area goes on reading the same until it is written again, so that
 * a savevm can rewrite only what changed.  The dates are recorded as
 * given; @ck->id is set.  -EEXIST if the name is taken.
 */
int sprite_volume_checkpoint_create(SpriteVolume *v, SpriteCheckpoint *ck,
                                    GError **errp);

/* Make the volume (and its VM state area) read as checkpoint @id_or_name
 * (an ID or a name).  -ENOENT if there is no such checkpoint. */
int sprite_volume_checkpoint_goto(SpriteVolume *v, const char *id_or_name,
                                  GError **errp);

/*
 * Delete the checkpoint with ID @id and name @name (either may be NULL,
 * not both).  -ENOENT if there is none; -EBUSY if a volume was created
 * from it.
 */
int sprite_volume_checkpoint_delete(SpriteVolume *v, const char *id,
                                    const char *name, GError **errp);

/* The checkpoints, by increasing ID: *@out (free with
 * sprite_checkpoints_free()) holds *@n of them.  Never blocks. */
void sprite_volume_checkpoint_list(SpriteVolume *v, SpriteCheckpoint **out,
                                   size_t *n);
void sprite_checkpoints_free(SpriteCheckpoint *cks, size_t n);

/*
 * Garbage collection.  A writer deletes the objects of its volume that
 * nothing can read any more (overwritten data, deleted checkpoints, old
 * metadata snapshots) once they have been garbage for the grace period,
 * and with @compaction rewrites the live data of segments that are mostly
 * garbage so that they become garbage too.  The writer's shipper does
 * this by itself every minute and at close; calling it is for
 * tools and tests.  -EROFS for a reader.  Rules: gc.c and
 * docs/durability.md (I9).
 */
typedef struct SpriteGcStats {
    uint64_t segments;          /* segment objects deleted */
    uint64_t bytes;             /* their bytes */
    uint64_t snapshots;         /* metadata snapshots deleted */
    uint64_t waiting;           /* garbage objects still in their grace */
    uint64_t compacted;         /* segments whose live data was rewritten */
    uint64_t compacted_bytes;   /* bytes rewritten */
} SpriteGcStats;

int sprite_volume_gc(SpriteVolume *v, bool compaction, SpriteGcStats *stats,
                     GError **errp);

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
    uint64_t pending_bytes; /* written here, not yet on the store */
} SpriteVolumeInfo;

/* Fill @info; free its strings with sprite_volume_info_clear().  Never
 * blocks (safe from an event loop). */
void sprite_volume_get_info(SpriteVolume *v, SpriteVolumeInfo *info);
void sprite_volume_info_clear(SpriteVolumeInfo *info);

G_END_DECLS

#endif /* SPRITE_VOLUME_H */
