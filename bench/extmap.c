/*
 * Extent map cost: memory per extent and lookup time for a map of N
 * extents, against the same lookups by binary search in a sorted array
 * (the least an index of extents can cost).  Prints JSON; run by
 * bench/extents.py.
 *
 *     extmap-bench N LOOKUPS
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>

#include "meta/extmap.h"

/* Bytes the heap has handed out, malloc's own overhead included. */
static uint64_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();

    return mi.uordblks + mi.hblkhd;
}

static int cmp_start(const void *key, const void *elem)
{
    uint64_t k = *(const uint64_t *)key;
    const SpriteExtent *e = elem;

    return k < e->start ? -1 : k >= e->start + e->len ? 1 : 0;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? g_ascii_strtoull(argv[1], NULL, 10) : 1000000;
    uint64_t lookups = argc > 2 ? g_ascii_strtoull(argv[2], NULL, 10)
                                : 1000000;
    SpriteExtmap *m = sprite_extmap_new();
    SpriteExtent *sorted = g_new(SpriteExtent, n);
    uint64_t *keys = g_new(uint64_t, lookups);
    GRand *r = g_rand_new_with_seed(1);
    uint64_t before, after, i, found = 0;
    gint64 t0, t1, t2, t3;

    /* Extents of 4 KiB with 4 KiB holes: none merge, lookups hit half. */
    for (i = 0; i < lookups; i++) {
        keys[i] = (uint64_t)g_rand_int_range(r, 0, (gint32)MIN(n * 2,
                                                             G_MAXINT32))
                  * 4096 + 100;
    }
    for (i = 0; i < n; i++) {
        sorted[i] = (SpriteExtent) {
            .start = i * 8192, .len = 4096, .seg = i + 1,
            .data_off = i * 4096, .kind = SPRITE_EXT_DATA,
        };
    }
    before = heap_in_use();
    t0 = g_get_monotonic_time();
    for (i = 0; i < n; i++) {
        sprite_extmap_set(m, &sorted[i], NULL, NULL);
    }
    t1 = g_get_monotonic_time();
    after = heap_in_use();
    for (i = 0; i < lookups; i++) {
        SpriteExtent e;
        uint64_t next;

        found += sprite_extmap_find(m, keys[i], &e, &next);
    }
    t2 = g_get_monotonic_time();
    for (i = 0; i < lookups; i++) {
        found += bsearch(&keys[i], sorted, n, sizeof(*sorted),
                         cmp_start) != NULL;
    }
    t3 = g_get_monotonic_time();
    printf("{\"extents\": %" G_GUINT64_FORMAT ", \"lookups\": %"
           G_GUINT64_FORMAT ", \"insert_ns\": %.1f, \"bytes_per_extent\": "
           "%.1f, \"array_bytes_per_extent\": %zu, \"lookup_ns\": %.1f, "
           "\"bsearch_ns\": %.1f, \"found\": %" G_GUINT64_FORMAT "}\n",
           n, lookups, (t1 - t0) * 1000.0 / n,
           (double)(after - before) / n, sizeof(*sorted),
           (t2 - t1) * 1000.0 / lookups, (t3 - t2) * 1000.0 / lookups,
           found);
    sprite_extmap_free(m);
    g_free(sorted);
    g_free(keys);
    g_rand_free(r);
    return 0;
}
