/*
 * Extent map: random operations checked against a byte-per-byte model.
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <glib.h>
#include <string.h>

#include "meta/extmap.h"

#define SPACE 4096

/* The model: for each byte, (kind, seg, data offset) or nothing. */
typedef struct Cell {
    uint32_t kind;
    uint64_t seg;
    uint64_t data;
} Cell;

static bool check_cb(const SpriteExtent *e, void *opaque)
{
    uint64_t *covered = opaque;

    *covered += e->len;
    return true;
}

static void check(SpriteExtmap *m, const Cell *model)
{
    uint64_t off = 0, covered = 0, bytes = 0;

    while (off < SPACE) {
        SpriteExtent e;
        uint64_t next, i;

        if (sprite_extmap_find(m, off, &e, &next)) {
            g_assert_cmpuint(e.start, ==, off);
            for (i = 0; i < e.len && off + i < SPACE; i++) {
                g_assert_cmpuint(model[off + i].kind, ==, e.kind);
                g_assert_cmpuint(model[off + i].seg, ==, e.seg);
                g_assert_cmpuint(model[off + i].data, ==, e.data_off + i);
            }
            bytes += e.len;
            off += e.len;
        } else {
            g_assert_cmpuint(next, >, off);
            for (i = off; i < MIN(next, SPACE); i++) {
                g_assert_cmpuint(model[i].kind, ==, SPRITE_EXT_NONE);
            }
            off = next;
        }
    }
    sprite_extmap_foreach(m, 0, SPACE, check_cb, &covered);
    g_assert_cmpuint(covered, ==, bytes);
    g_assert_cmpuint(sprite_extmap_bytes(m, SPRITE_EXT_DATA) +
                     sprite_extmap_bytes(m, SPRITE_EXT_ZERO), ==, bytes);
}

static void test_random(void)
{
    SpriteExtmap *m = sprite_extmap_new();
    Cell *model = g_new0(Cell, SPACE);
    GRand *r = g_rand_new_with_seed(42);
    int iter;

    for (iter = 0; iter < 3000; iter++) {
        SpriteExtent e;
        uint64_t lo, hi, i;

        e.start = g_rand_int_range(r, 0, SPACE - 1);
        e.len = g_rand_int_range(r, 1, MIN(SPACE - e.start, 300) + 1);
        e.kind = g_rand_int_range(r, 0, 3);
        e.seg = iter + 1;
        e.data_off = g_rand_int_range(r, 0, 100000);
        sprite_extmap_set(m, &e, &lo, &hi);
        g_assert_cmpuint(lo, <=, e.start);
        g_assert_cmpuint(hi, >=, e.start + e.len);
        for (i = 0; i < e.len; i++) {
            Cell *c = &model[e.start + i];

            c->kind = e.kind;
            c->seg = e.kind ? e.seg : 0;
            c->data = e.kind ? e.data_off + i : 0;
        }
        if (iter % 50 == 0) {
            check(m, model);
        }
    }
    check(m, model);
    g_rand_free(r);
    g_free(model);
    sprite_extmap_free(m);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/extmap/random", test_random);
    return g_test_run();
}
