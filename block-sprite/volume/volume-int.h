/*
 * Sprite volume: what the volume's own source files share
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The volume (volume.c) and its garbage collector (gc.c) both work on
 * struct SpriteVolume; nothing outside block-sprite/volume includes this.
 */
#ifndef SPRITE_VOLUME_INT_H
#define SPRITE_VOLUME_INT_H

#include "sprite/volume.h"
#include "meta/extmap.h"
#include "meta/meta.h"
#include "store/chunker.h"
#include "store/segcache.h"
#include "store/segment.h"
#include "volume/lease.h"

/*
 * A segment taken from the pending log, being (or to be) uploaded.  The
 * log's file becomes the sealed log, which readers read, and the other
 * log file takes writes; the flushing thread builds @obj from the sealed
 * log without holding the volume lock.
 */
typedef struct Sealed {
    SpriteSegHeader *h;
    int fd;                     /* the sealed log: the segment's data */
    uint8_t *obj;               /* the whole object, once built */
    size_t len;
    bool mapped;                /* @obj is a mapping of the file */
    SpriteExtmap *map;          /* its view (see SpriteVolume.pending) */
    bool opaque;
    bool disk;                  /* it changes the disk, not only VM state */
} Sealed;

/* A checkpoint, as kept in memory. */
typedef struct Ckpt {
    SpriteCheckpoint pub;       /* owns pub.name; durable and added_bytes
                                 * are computed when listed */
    uint64_t seq;               /* the segment that holds its record */
    uint64_t written;           /* SpriteVolume's bytes written, then */
    SpriteExtmap *map;          /* its extents; NULL: in the database */
    unsigned restore_units;     /* the size of its restore set (volume.c) */
} Ckpt;

struct SpriteVolume {
    SpriteUrl *url;
    char *url_str;
    SpriteObjstore *os;
    SpriteVolume *base;
    char *base_url;
    uint64_t base_seq;          /* the base's segment we are pinned to */
    uint64_t base_ckpt;         /* the base's checkpoint we were made
                                 * from (0: none) */
    uint64_t pin_seq;           /* opened as a base: stop at this segment */
    bool read_only;
    char *dir;                  /* this volume's cache directory */
    bool private_dir;           /* a temporary directory, removed at close */
    int lock_fd;
    SpriteLease *lease;         /* writers only */
    SpriteLeaseInfo lease_info;

    /*
     * Serialises flushes, which upload without holding @lock so that I/O
     * goes on meanwhile.  Lock order: @flush_lock, then @lock.
     */
    GMutex flush_lock;
    uint64_t snap_seq;          /* newest uploaded metadata snapshot */
    bool snap_inflight;         /* the shipper has one to upload */

    GMutex lock;
    /* Protected by @lock; also read without it, atomically (getlength
     * must not wait for a flush's upload) */
    uint64_t size;
    uint64_t seq;               /* newest durable segment */
    uint64_t data_bytes;        /* bytes of the durable map that are data */
    uint64_t store_bytes;       /* bytes of the segments on the store */
    uint64_t unshipped;         /* data bytes written, not yet durable */
    /* Protected by @lock */
    bool segment_due;           /* write a segment even without records:
                                 * the size changed, or we must claim the
                                 * next sequence number (a takeover) */
    bool fenced;                /* another writer wrote our next segment */
    SpriteMeta *meta;
    SpriteExtmap *map;          /* durable extents */
    SpriteExtmap *pending;      /* unflushed writes, by volume offset */
    bool pending_opaque;        /* @pending is the whole view (a goto) */
    Sealed *sealed;             /* the segment being uploaded, if any */
    uint64_t written;           /* data bytes of the durable segments */
    GArray *records;            /* SpriteRecord of the pending log */
    unsigned pend_disk;         /* how many of them change the disk */
    int log_fd[2];              /* the two log files, used in turn */
    int pend_fd;                /* the one that takes writes */
    uint64_t pend_len;          /* bytes written or being written to it */
    /* Guest writes copy their bytes into the log without @lock, in room
     * they took with it; sealing waits for them, and holds off new ones
     * while it does. */
    unsigned pend_writers;
    bool sealing;
    GCond pend_idle;
    SpriteSegCache *cache;
    uint64_t cache_limit;       /* bytes */

    /* Fetching a checkpoint's VM state ahead of the loadvm that follows
     * a goto (volume.c: warm_queue) */
    GThreadPool *warm_pool;     /* created with @lock held */
    unsigned warm_gen;          /* bumped by each goto; atomic */

    /* Ckpt *, by increasing ID: changed with @lock and @ckpt_lock held,
     * read with either (listing must not wait for a cache miss) */
    GMutex ckpt_lock;
    GPtrArray *ckpts;

    /* The shipper (writers only); its flags are protected by @lock */
    GThread *shipper;
    GCond ship_cond;
    bool ship_wanted;
    bool snap_wanted;           /* upload a metadata snapshot */
    bool ship_stop;

    /* Deduplication of the VM state (volume.c), protected by @lock */
    GByteArray *vm_buf;         /* the stream from @vm_pos, not all stored */
    uint64_t vm_pos;
    bool vm_in_place;           /* the stream broke off: writes go in place */
    size_t vm_start;            /* the first byte of @vm_buf not stored */
    size_t vm_scanned;          /* the chunker's position in @vm_buf */
    SpriteChunker vm_chunker;
    GHashTable *vm_stream;      /* VmChunk: chunks of the stream, by hash */
    GHashTable *vm_ckpt;        /* VmChunk: those of checkpoint @vm_ckpt_id
                                 * (NULL: none) */
    uint64_t vm_ckpt_id;
    GHashTable *vm_unsaved;     /* the index of checkpoint @vm_unsaved_id,
                                 * whose record is not applied yet */
    uint64_t vm_unsaved_id;
    bool snap_due;              /* the database holds what no snapshot
                                 * has yet (a checkpoint's VM state index,
                                 * a restore set), protected by @lock */

    /* The restore set being recorded (volume.c), protected by @lock */
    uint64_t rec_id;            /* of this checkpoint; 0: none (atomic) */
    GArray *rec_units;          /* uint64_t, in the order first read */

    /* Garbage collection (gc.c): one pass at a time */
    GMutex gc_lock;
    int64_t gc_grace_ms;        /* < 0: none */
    uint64_t gc_seq;            /* @seq at the last pass */
    uint64_t gc_waiting;        /* garbage it left for a later pass */
};

/* Upload everything pending (VM state included).  volume.c */
int sprite_volume_flush_all(SpriteVolume *v, GError **errp);

/*
 * Write the live bytes of durable extent @e again (@buf holds its data),
 * where nothing newer covers them, so that the next upload moves them
 * out of segment @e->seg; adds the bytes written to *@moved.  Parts that
 * the durable map no longer maps as @e are left alone.  volume.c
 */
int sprite_volume_relocate(SpriteVolume *v, const SpriteExtent *e,
                           const uint8_t *buf, uint64_t *moved,
                           GError **errp);

#endif /* SPRITE_VOLUME_INT_H */
