/*
 * Sprite extent map: an in-memory map of a volume's byte ranges
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Non-overlapping extents keyed by their start.  Setting a range
 * replaces whatever it overlaps, splitting extents at its edges.  Not
 * thread-safe: the owner locks.
 */
#ifndef SPRITE_EXTMAP_H
#define SPRITE_EXTMAP_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum SpriteExtentKind {
    SPRITE_EXT_NONE = 0,    /* unmapped: used to remove a range */
    SPRITE_EXT_DATA = 1,    /* bytes at @data_off of segment @seg */
    SPRITE_EXT_ZERO = 2,    /* reads as zeroes (overrides a base) */
} SpriteExtentKind;

typedef struct SpriteExtent {
    uint64_t start;
    uint64_t len;
    uint64_t seg;           /* the segment that holds the data */
    uint64_t data_off;      /* offset of @start's byte in the data */
    uint32_t kind;
} SpriteExtent;

typedef struct SpriteExtmap SpriteExtmap;

SpriteExtmap *sprite_extmap_new(void);
void sprite_extmap_free(SpriteExtmap *m);
void sprite_extmap_clear(SpriteExtmap *m);

/*
 * Map @e->start .. @e->start + @e->len to @e (remove the range for
 * SPRITE_EXT_NONE).  If @lo/@hi are non-NULL they receive the window of
 * the volume whose extents changed: every extent that now starts in
 * [lo, hi) lies within it.
 */
void sprite_extmap_set(SpriteExtmap *m, const SpriteExtent *e,
                       uint64_t *lo, uint64_t *hi);

/*
 * Find what covers @off: returns true and the extent clipped to start at
 * @off, or false with *@next set to the start of the next extent
 * (UINT64_MAX if none).
 */
bool sprite_extmap_find(SpriteExtmap *m, uint64_t off, SpriteExtent *out,
                        uint64_t *next);

/* Call @fn for every extent starting in [@lo, @hi), in order, unclipped;
 * stop when it returns false. */
void sprite_extmap_foreach(SpriteExtmap *m, uint64_t lo, uint64_t hi,
                           bool (*fn)(const SpriteExtent *e, void *opaque),
                           void *opaque);

/* Number of extents, and bytes mapped with @kind. */
guint sprite_extmap_count(SpriteExtmap *m);
uint64_t sprite_extmap_bytes(SpriteExtmap *m, SpriteExtentKind kind);

/* A copy of @m. */
SpriteExtmap *sprite_extmap_copy(SpriteExtmap *m);

/* Bytes mapped with @kind by the extents that start at or after @lo. */
uint64_t sprite_extmap_bytes_from(SpriteExtmap *m, uint64_t lo,
                                  SpriteExtentKind kind);

#endif /* SPRITE_EXTMAP_H */
