/*
 * Sprite segment cache: immutable segment objects, read through a local
 * directory
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Each segment the volume reads is mirrored in a sparse file of the cache
 * directory at the same offsets as in the object.  There is no map of
 * which parts are present: a chunk is present when its bytes match the
 * checksum in the segment header, which the cache checks the first time
 * it uses the chunk after open (a hole, a torn write or a corrupt byte
 * all fail it, and the chunk is fetched again).  Clean data is evicted,
 * least recently used segment first, when the cache grows past its
 * bound; segments being written are not in this cache (see volume.c).
 *
 * Thread-safe.  Chunks are fetched without the cache's lock, so reads of
 * other chunks, and other fetches, go on meanwhile.
 */
#ifndef SPRITE_SEGCACHE_H
#define SPRITE_SEGCACHE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "sprite/objstore.h"

typedef struct SpriteSegCache SpriteSegCache;

/* Cache segments of volume @volume on @os in directory @dir, bounded to
 * @limit bytes. */
int sprite_segcache_open(SpriteObjstore *os, const char *volume,
                         const char *dir, uint64_t limit,
                         SpriteSegCache **out, GError **errp);
void sprite_segcache_close(SpriteSegCache *c);

/*
 * Read @len bytes at @data_off of the data of segment @seq into @buf,
 * fetching from the store what the cache lacks (with read-ahead).
 */
int sprite_segcache_read(SpriteSegCache *c, uint64_t seq, uint64_t data_off,
                         uint64_t len, void *buf, GError **errp);

/*
 * Likewise, but only from chunks already checked, without waiting for
 * the cache's lock: -EAGAIN if that would take more (a fetch, a check,
 * the lock).  For callers that must not block on the network.
 */
int sprite_segcache_read_cached(SpriteSegCache *c, uint64_t seq,
                                uint64_t data_off, uint64_t len, void *buf);

/* Make a range present and checked, as sprite_segcache_read() does, but
 * read nothing out. */
int sprite_segcache_fetch(SpriteSegCache *c, uint64_t seq, uint64_t data_off,
                          uint64_t len, GError **errp);

/*
 * Whether the cache holds (or fetches now) at least half of segment
 * @seq's data: not when it read just its header, or a record for an open.
 * A guess for files found at open: more than a chunk.
 */
bool sprite_segcache_mostly_cached(SpriteSegCache *c, uint64_t seq);

/* Add a segment just written to the store (@obj is the whole object). */
int sprite_segcache_insert(SpriteSegCache *c, uint64_t seq,
                           const void *obj, size_t len, GError **errp);

/* Likewise, taking the file at @path (on the cache's file system), which
 * holds the whole object (@len bytes): no copy. */
int sprite_segcache_adopt(SpriteSegCache *c, uint64_t seq, const char *path,
                          size_t len, GError **errp);

/* Fetch and check the header of segment @seq (caller frees *@out). */
typedef struct SpriteSegHeader SpriteSegHeader;
int sprite_segcache_header(SpriteSegCache *c, uint64_t seq,
                           const SpriteSegHeader **out, GError **errp);

/* Forget everything cached (the files too), once reads and prefetches
 * under way are done with it. */
void sprite_segcache_drop_all(SpriteSegCache *c);

/* Forget segment @seq (deleted from the store), unless a reader uses it
 * now: then eviction removes it later. */
void sprite_segcache_drop(SpriteSegCache *c, uint64_t seq);

/* Bytes the cache holds now. */
uint64_t sprite_segcache_used(SpriteSegCache *c);

#endif /* SPRITE_SEGCACHE_H */
