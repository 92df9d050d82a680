/*
 * Sprite metadata: the local SQLite database of a volume
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The database lives in the volume's cache directory (WAL mode) and is a
 * cache of the object store's truth: it is only ever updated after the
 * segments it describes are durable (invariant I3 in docs/durability.md),
 * and a copy of it is shipped as a metadata snapshot (store/segment.h).
 *
 * Schema (format 1):
 *   volume(key TEXT PRIMARY KEY, value)       -- facts, see SPRITE_META_*
 *   extents(start INTEGER PRIMARY KEY, length, kind, seg, data_off)
 *                                             -- the live extent map
 *   segments(seq INTEGER PRIMARY KEY, header_len, data_len)
 *                                             -- segments on the store
 *   checkpoints(id INTEGER PRIMARY KEY, seq, info)
 *                 -- checkpoints: the segment that took each, and its
 *                    description (see SPRITE_REC_CHECKPOINT)
 *   checkpoint_extents(ckpt, start, length, kind, seg, data_off,
 *                      PRIMARY KEY (ckpt, start))
 *                 -- each checkpoint's copy of the extent map
 *   vm_chunks(ckpt, hash, seg, data_off, length,
 *             PRIMARY KEY (ckpt, hash))
 *                 -- the chunks of a checkpoint's VM state by XXH3-128
 *                    (16 bytes, low half first, each little-endian) and
 *                    where their bytes are, for the next checkpoint to
 *                    refer to (volume.c); not every checkpoint has them
 *   restore_sets(ckpt, ord, unit, PRIMARY KEY (ckpt, ord))
 *                 -- the MiB of a checkpoint's VM state that a restore
 *                    with an empty cache read first, in the order read
 *                    (unit N: bytes N MiB to N+1 MiB of the area), for
 *                    the next restore to fetch ahead (volume.c); a hint
 *   garbage(key TEXT PRIMARY KEY, since)
 *                 -- objects the garbage collector found unreferenced,
 *                    and since when (Unix time in microseconds)
 *
 * Not thread-safe: the volume serialises access.
 */
#ifndef SPRITE_META_H
#define SPRITE_META_H

#include <glib.h>
#include <stdint.h>

#include "meta/extmap.h"

#define SPRITE_META_FORMAT "format"     /* schema version, 1 */
#define SPRITE_META_UUID "uuid"         /* the volume's uuid */
#define SPRITE_META_SIZE "size"         /* volume size in bytes */
#define SPRITE_META_SEQ "seq"           /* newest segment applied */
#define SPRITE_META_WRITTEN "written"   /* data bytes of those segments */

typedef struct SpriteMeta SpriteMeta;

/* Open (creating if absent) the database at @path. */
int sprite_meta_open(const char *path, SpriteMeta **out, GError **errp);
void sprite_meta_close(SpriteMeta *m);

int sprite_meta_get(SpriteMeta *m, const char *key, char **value,
                    GError **errp);
int sprite_meta_get_u64(SpriteMeta *m, const char *key, uint64_t *value,
                        GError **errp);
int sprite_meta_set(SpriteMeta *m, const char *key, const char *value,
                    GError **errp);
int sprite_meta_set_u64(SpriteMeta *m, const char *key, uint64_t value,
                        GError **errp);

/* A transaction; a failed commit leaves none open (it rolls back). */
int sprite_meta_begin(SpriteMeta *m, GError **errp);
int sprite_meta_commit(SpriteMeta *m, GError **errp);
void sprite_meta_rollback(SpriteMeta *m);

/* Load every extent into @map. */
int sprite_meta_load_extents(SpriteMeta *m, SpriteExtmap *map,
                             GError **errp);

/* Load the extents of checkpoint @id into @map. */
int sprite_meta_load_checkpoint(SpriteMeta *m, uint64_t id,
                                SpriteExtmap *map, GError **errp);

/* Record checkpoint @id, taken by segment @seq, as a copy of the live
 * extents (replacing one of the same @id). */
int sprite_meta_add_checkpoint(SpriteMeta *m, uint64_t id, uint64_t seq,
                               const char *info, GError **errp);

/* Make the live extents those of checkpoint @id. */
int sprite_meta_goto_checkpoint(SpriteMeta *m, uint64_t id, GError **errp);

int sprite_meta_delete_checkpoint(SpriteMeta *m, uint64_t id,
                                  GError **errp);

/* Call @fn for every checkpoint, by increasing @id. */
int sprite_meta_foreach_checkpoint(SpriteMeta *m,
                                   void (*fn)(uint64_t id, uint64_t seq,
                                              const char *info,
                                              void *opaque),
                                   void *opaque, GError **errp);

/* Make the extents starting in [@lo, @hi) those of @map. */
int sprite_meta_store_window(SpriteMeta *m, SpriteExtmap *map,
                             uint64_t lo, uint64_t hi, GError **errp);

int sprite_meta_add_segment(SpriteMeta *m, uint64_t seq,
                            uint32_t header_len, uint64_t data_len,
                            GError **errp);

/* Total bytes of the segments recorded. */
int sprite_meta_segment_bytes(SpriteMeta *m, uint64_t *bytes,
                              GError **errp);

/* A chunk of VM state and where its bytes are. */
typedef struct SpriteChunkRef {
    uint8_t hash[16];
    uint64_t seg;
    uint64_t data_off;
    uint64_t len;
} SpriteChunkRef;

/* Record the chunks of checkpoint @ckpt's VM state (forgotten with it). */
int sprite_meta_add_vm_chunks(SpriteMeta *m, uint64_t ckpt,
                              const SpriteChunkRef *refs, size_t n,
                              GError **errp);

/* Call @fn for each chunk recorded for checkpoint @ckpt. */
int sprite_meta_foreach_vm_chunk(SpriteMeta *m, uint64_t ckpt,
                                 void (*fn)(const SpriteChunkRef *ref,
                                            void *opaque),
                                 void *opaque, GError **errp);

/*
 * Record @units (@n of them) as the restore set of checkpoint @ckpt
 * (forgotten with it), replacing any it had.
 */
int sprite_meta_set_restore_set(SpriteMeta *m, uint64_t ckpt,
                                const uint64_t *units, size_t n,
                                GError **errp);

/* Append the restore set of checkpoint @ckpt (if any) to @units. */
int sprite_meta_get_restore_set(SpriteMeta *m, uint64_t ckpt, GArray *units,
                                GError **errp);

/* Call @fn for every segment recorded, by increasing @seq. */
int sprite_meta_foreach_segment(SpriteMeta *m,
                                void (*fn)(uint64_t seq, uint32_t header_len,
                                           uint64_t data_len, void *opaque),
                                void *opaque, GError **errp);

/* Forget segment @seq (deleted from the store). */
int sprite_meta_remove_segment(SpriteMeta *m, uint64_t seq, GError **errp);

/* Call @fn once for every segment that a checkpoint's extents point to. */
int sprite_meta_checkpoint_segments(SpriteMeta *m,
                                    void (*fn)(uint64_t seq, void *opaque),
                                    void *opaque, GError **errp);

/*
 * Note that object @key is garbage as of @now, unless it was already:
 * *@since is when it was first noted.
 */
int sprite_meta_garbage_since(SpriteMeta *m, const char *key, int64_t now,
                              int64_t *since, GError **errp);

/* Forget every garbage key that is not in the set @keep (of strings). */
int sprite_meta_garbage_prune(SpriteMeta *m, GHashTable *keep, GError **errp);

/* A consistent copy of the database as bytes (caller unrefs). */
int sprite_meta_export(SpriteMeta *m, GBytes **out, GError **errp);

#endif /* SPRITE_META_H */
