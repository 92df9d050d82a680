/*
 * Sprite chunker: content-defined chunk boundaries (see chunker.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The gear hash adds a random 64-bit value per byte to the hash shifted
 * left by one, so it depends on the last 64 bytes only.  A boundary is
 * where its top bits are zero: more of them before SPRITE_CHUNK_AVG and
 * fewer after ("normalised chunking"), which keeps sizes near the
 * average.  Bytes before SPRITE_CHUNK_MIN are skipped, not hashed, which
 * is most of the speed.
 */
#include <glib.h>

#include "store/chunker.h"

/* 2^16 = SPRITE_CHUNK_AVG: boundaries are rarer before it... */
#define MASK_SMALL 0xffffc00000000000ULL    /* 18 bits */
/* ...and more frequent after it. */
#define MASK_LARGE 0xfffc000000000000ULL    /* 14 bits */

G_STATIC_ASSERT(SPRITE_CHUNK_AVG == 1u << 16);

static uint64_t gear[256];

/* splitmix64: a fixed table, the same in every process and version. */
static void gear_init(void)
{
    uint64_t x = 0x5370726974650000ULL;     /* "Sprite" */
    int i;

    for (i = 0; i < 256; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        gear[i] = z ^ (z >> 31);
    }
}

void sprite_chunker_reset(SpriteChunker *c)
{
    static gsize once;

    if (g_once_init_enter(&once)) {
        gear_init();
        g_once_init_leave(&once, 1);
    }
    c->hash = 0;
    c->len = 0;
}

size_t sprite_chunker_scan(SpriteChunker *c, const uint8_t *p, size_t n)
{
    uint64_t h = c->hash;
    size_t i = 0, len = c->len;

    /* The first bytes of a chunk never end it. */
    if (len < SPRITE_CHUNK_MIN - 64) {
        size_t skip = MIN(n, SPRITE_CHUNK_MIN - 64 - len);

        i += skip;
        len += skip;
    }
    for (; i < n && len < SPRITE_CHUNK_AVG; i++, len++) {
        h = (h << 1) + gear[p[i]];
        if (!(h & MASK_SMALL) && len >= SPRITE_CHUNK_MIN) {
            goto cut;
        }
    }
    for (; i < n && len < SPRITE_CHUNK_MAX; i++, len++) {
        h = (h << 1) + gear[p[i]];
        if (!(h & MASK_LARGE)) {
            goto cut;
        }
    }
    if (len == SPRITE_CHUNK_MAX) {
        goto cut_here;
    }
    c->hash = h;
    c->len = len;
    return 0;

cut:
    i++;
cut_here:
    sprite_chunker_reset(c);
    return i;
}
