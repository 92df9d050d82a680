/*
 * Sprite chunker: content-defined chunk boundaries
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Cuts a byte stream into chunks whose boundaries depend on the bytes
 * around them (a gear hash, as in FastCDC), not on their position: data
 * that reappears shifted in a later stream is cut into the same chunks
 * and can be recognised.  The volume uses it for savevm's VM state, whose
 * unchanged memory lands at a different stream position every time.
 *
 * Chunks are SPRITE_CHUNK_MIN to SPRITE_CHUNK_MAX bytes, about
 * SPRITE_CHUNK_AVG on average.  The boundaries are part of no on-store
 * format; only their stability matters.
 */
#ifndef SPRITE_CHUNKER_H
#define SPRITE_CHUNKER_H

#include <stddef.h>
#include <stdint.h>

#define SPRITE_CHUNK_MIN (16u << 10)
#define SPRITE_CHUNK_AVG (64u << 10)
#define SPRITE_CHUNK_MAX (256u << 10)

typedef struct SpriteChunker {
    uint64_t hash;          /* over the bytes scanned so far */
    size_t len;             /* bytes of the current chunk scanned */
} SpriteChunker;

/* Start a chunk. */
void sprite_chunker_reset(SpriteChunker *c);

/*
 * Scan @n more bytes of the current chunk from @p.  Returns how many of
 * them belong to it when it ends within them (the chunker is then reset
 * for the next one), or 0 when it goes on past them.
 */
size_t sprite_chunker_scan(SpriteChunker *c, const uint8_t *p, size_t n);

#endif /* SPRITE_CHUNKER_H */
