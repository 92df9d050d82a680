/*
 * Extent map: random operations checked against a byte-per-byte model,
 * and a map of many extents built in order, then cut up and refilled.
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <glib.h>
#include <string.h>

#include "meta/extmap.h"

/* The model: for each byte, (kind, seg, data offset) or nothing. */
typedef struct Cell {
    uint32_t kind;
    uint64_t seg;
    uint64_t data;
} Cell;

typedef struct RandomParams {
    uint64_t space;         /* bytes modelled */
    int iters;
    uint64_t max_len;       /* of most writes */
    uint64_t big_len;       /* of the others */
    int big_every;          /* one write in so many */
    int check_every;
    int window_every;       /* check the window of every n-th write */
    int copy_every;
} RandomParams;

static bool append_cb(const SpriteExtent *e, void *opaque)
{
    g_array_append_val((GArray *)opaque, *e);
    return true;
}

/* The extents of @m that start in [@lo, @hi), in order. */
static GArray *list(SpriteExtmap *m, uint64_t lo, uint64_t hi)
{
    GArray *a = g_array_new(false, false, sizeof(SpriteExtent));

    sprite_extmap_foreach(m, lo, hi, append_cb, a);
    return a;
}

static void assert_same_extent(const SpriteExtent *a, const SpriteExtent *b)
{
    g_assert_cmpuint(a->start, ==, b->start);
    g_assert_cmpuint(a->len, ==, b->len);
    g_assert_cmpuint(a->kind, ==, b->kind);
    g_assert_cmpuint(a->seg, ==, b->seg);
    g_assert_cmpuint(a->data_off, ==, b->data_off);
}

static void assert_same(GArray *a, GArray *b)
{
    guint i;

    g_assert_cmpuint(a->len, ==, b->len);
    for (i = 0; i < a->len; i++) {
        assert_same_extent(&g_array_index(a, SpriteExtent, i),
                           &g_array_index(b, SpriteExtent, i));
    }
}

typedef struct StopCtx {
    GArray *seen;
    guint left;
} StopCtx;

static bool stop_cb(const SpriteExtent *e, void *opaque)
{
    StopCtx *c = opaque;

    g_array_append_val(c->seen, *e);
    return --c->left > 0;
}

/* Check @m against @full, its extents in order, through every accessor. */
static void check_access(SpriteExtmap *m, GArray *full, GRand *r)
{
    uint64_t bytes[3] = { 0 }, from_bytes = 0, prev_end = 0, from;
    uint64_t lo, hi, next;
    SpriteExtent x;
    StopCtx stop;
    GArray *sub;
    guint i, a, b;

    g_assert_cmpuint(sprite_extmap_count(m), ==, full->len);
    from = full->len ? g_array_index(full, SpriteExtent,
                                     g_rand_int_range(r, 0, full->len)).start
                     : 0;
    for (i = 0; i < full->len; i++) {
        const SpriteExtent *e = &g_array_index(full, SpriteExtent, i);
        uint64_t in = g_rand_int_range(r, 0, MIN(e->len, G_MAXINT32));

        g_assert(e->kind == SPRITE_EXT_DATA || e->kind == SPRITE_EXT_ZERO);
        g_assert_cmpuint(e->len, >, 0);
        g_assert_cmpuint(e->start, >=, prev_end);
        bytes[e->kind] += e->len;
        if (e->start >= from && e->kind == SPRITE_EXT_DATA) {
            from_bytes += e->len;
        }

        /* The hole before it, at its edges and inside. */
        if (e->start > prev_end) {
            uint64_t h = prev_end + g_rand_int_range(r, 0, MIN(e->start -
                                                     prev_end, G_MAXINT32));

            g_assert_false(sprite_extmap_find(m, prev_end, &x, &next));
            g_assert_cmpuint(next, ==, e->start);
            g_assert_false(sprite_extmap_find(m, h, &x, &next));
            g_assert_cmpuint(next, ==, e->start);
            g_assert_false(sprite_extmap_find(m, e->start - 1, &x, &next));
            g_assert_cmpuint(next, ==, e->start);
        }

        /* The extent at its start, inside and at its last byte. */
        g_assert_true(sprite_extmap_find(m, e->start, &x, &next));
        assert_same_extent(&x, e);
        g_assert_true(sprite_extmap_find(m, e->start + in, &x, &next));
        g_assert_cmpuint(x.start, ==, e->start + in);
        g_assert_cmpuint(x.len, ==, e->len - in);
        g_assert_cmpuint(x.data_off, ==, e->data_off + in);
        g_assert_cmpuint(x.seg, ==, e->seg);
        g_assert_cmpuint(x.kind, ==, e->kind);
        g_assert_true(sprite_extmap_find(m, e->start + e->len - 1, &x,
                                         &next));
        g_assert_cmpuint(x.len, ==, 1);
        prev_end = e->start + e->len;
    }
    if (prev_end < UINT64_MAX) {
        g_assert_false(sprite_extmap_find(m, prev_end, &x, &next));
        g_assert_cmpuint(next, ==, UINT64_MAX);
        g_assert_false(sprite_extmap_find(m, UINT64_MAX, &x, &next));
        g_assert_cmpuint(next, ==, UINT64_MAX);
    }
    g_assert_cmpuint(sprite_extmap_bytes(m, SPRITE_EXT_DATA), ==,
                     bytes[SPRITE_EXT_DATA]);
    g_assert_cmpuint(sprite_extmap_bytes(m, SPRITE_EXT_ZERO), ==,
                     bytes[SPRITE_EXT_ZERO]);
    g_assert_cmpuint(sprite_extmap_bytes_from(m, from, SPRITE_EXT_DATA), ==,
                     from_bytes);

    /* foreach over a window whose edges fall inside extents or holes. */
    lo = g_rand_int_range(r, 0, G_MAXINT32) % (prev_end + 1);
    hi = lo + g_rand_int_range(r, 0, G_MAXINT32) % (prev_end - lo + 1);
    sub = list(m, lo, hi);
    a = 0;
    while (a < full->len && g_array_index(full, SpriteExtent, a).start < lo) {
        a++;
    }
    b = a;
    while (b < full->len && g_array_index(full, SpriteExtent, b).start < hi) {
        b++;
    }
    g_assert_cmpuint(sub->len, ==, b - a);
    for (i = a; i < b; i++) {
        assert_same_extent(&g_array_index(sub, SpriteExtent, i - a),
                           &g_array_index(full, SpriteExtent, i));
    }
    g_array_free(sub, true);

    /* foreach stops when told to. */
    if (full->len > 0) {
        a = g_rand_int_range(r, 0, full->len);
        stop.seen = g_array_new(false, false, sizeof(SpriteExtent));
        stop.left = g_rand_int_range(r, 1, full->len - a + 1);
        b = a + stop.left;
        sprite_extmap_foreach(m, g_array_index(full, SpriteExtent, a).start,
                              UINT64_MAX, stop_cb, &stop);
        g_assert_cmpuint(stop.seen->len, ==, b - a);
        for (i = a; i < b; i++) {
            assert_same_extent(&g_array_index(stop.seen, SpriteExtent, i - a),
                               &g_array_index(full, SpriteExtent, i));
        }
        g_array_free(stop.seen, true);
    }
}

static void check(SpriteExtmap *m, const Cell *model, uint64_t space,
                  GRand *r)
{
    GArray *full = list(m, 0, UINT64_MAX);
    uint64_t off = 0, i;
    guint k;

    for (k = 0; k < full->len; k++) {
        const SpriteExtent *e = &g_array_index(full, SpriteExtent, k);

        g_assert_cmpuint(e->start + e->len, <=, space);
        for (; off < e->start; off++) {
            g_assert_cmpuint(model[off].kind, ==, SPRITE_EXT_NONE);
        }
        for (i = 0; i < e->len; i++) {
            g_assert_cmpuint(model[off + i].kind, ==, e->kind);
            g_assert_cmpuint(model[off + i].seg, ==, e->seg);
            g_assert_cmpuint(model[off + i].data, ==, e->data_off + i);
        }
        off += e->len;
    }
    for (; off < space; off++) {
        g_assert_cmpuint(model[off].kind, ==, SPRITE_EXT_NONE);
    }
    check_access(m, full, r);
    g_array_free(full, true);
}

/*
 * The window sprite_extmap_set() must report for @e, given the extents
 * @before it: @e's range widened to the extents it overlaps.
 */
static void expected_window(GArray *before, const SpriteExtent *e,
                            uint64_t *lo, uint64_t *hi)
{
    uint64_t end = e->start + e->len;
    guint i;

    *lo = e->start;
    *hi = end;
    for (i = 0; i < before->len; i++) {
        const SpriteExtent *x = &g_array_index(before, SpriteExtent, i);

        if (x->start < end && x->start + x->len > e->start) {
            *lo = MIN(*lo, x->start);
            *hi = MAX(*hi, x->start + x->len);
        }
    }
}

/* The extents of @a that start outside [@lo, @hi). */
static GArray *outside(GArray *a, uint64_t lo, uint64_t hi)
{
    GArray *o = g_array_new(false, false, sizeof(SpriteExtent));
    guint i;

    for (i = 0; i < a->len; i++) {
        const SpriteExtent *x = &g_array_index(a, SpriteExtent, i);

        if (x->start < lo || x->start >= hi) {
            g_array_append_val(o, *x);
        }
    }
    return o;
}

static void run_random(const RandomParams *p)
{
    SpriteExtmap *m = sprite_extmap_new();
    SpriteExtmap *copy = NULL;
    GArray *copy_list = NULL;
    Cell *model = g_new0(Cell, p->space);
    GRand *r = g_rand_new_with_seed(42);
    int iter;

    for (iter = 0; iter < p->iters; iter++) {
        bool exact = iter % p->window_every == 0;
        GArray *before = exact ? list(m, 0, UINT64_MAX) : NULL;
        uint64_t max_len = p->max_len;
        uint64_t lo, hi, i;
        SpriteExtent e;

        if (g_rand_int_range(r, 0, p->big_every) == 0) {
            max_len = p->big_len;
        }
        e.start = g_rand_int_range(r, 0, p->space - 1);
        e.len = g_rand_int_range(r, 1, MIN(p->space - e.start, max_len) + 1);
        if (g_rand_int_range(r, 0, 64) == 0) {
            e.len = 0;          /* splits the extent at e.start, if any */
        }
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

        if (exact) {
            GArray *after = list(m, 0, UINT64_MAX);
            GArray *out_before, *out_after;
            uint64_t xlo, xhi;

            /* The window is exact, and nothing outside it changed. */
            expected_window(before, &e, &xlo, &xhi);
            g_assert_cmpuint(lo, ==, xlo);
            g_assert_cmpuint(hi, ==, xhi);
            out_before = outside(before, lo, hi);
            out_after = outside(after, lo, hi);
            assert_same(out_before, out_after);
            g_array_free(out_before, true);
            g_array_free(out_after, true);
            g_array_free(after, true);
            g_array_free(before, true);
        }

        if (iter % p->copy_every == 0) {
            /* The last copy did not follow the map, nor does this one. */
            if (copy) {
                GArray *now = list(copy, 0, UINT64_MAX);

                assert_same(now, copy_list);
                g_array_free(now, true);
                g_array_free(copy_list, true);
                e = (SpriteExtent) { .start = 0, .len = p->space };
                sprite_extmap_set(copy, &e, NULL, NULL);
                g_assert_cmpuint(sprite_extmap_count(copy), ==, 0);
                g_assert_cmpuint(sprite_extmap_bytes(copy, SPRITE_EXT_DATA),
                                 ==, 0);
                sprite_extmap_free(copy);
            }
            copy = sprite_extmap_copy(m);
            copy_list = list(m, 0, UINT64_MAX);
            check(copy, model, p->space, r);
        }
        if (iter % p->check_every == 0) {
            check(m, model, p->space, r);
        }
    }
    check(m, model, p->space, r);
    sprite_extmap_clear(m);
    g_assert_cmpuint(sprite_extmap_count(m), ==, 0);
    memset(model, 0, p->space * sizeof(*model));
    check(m, model, p->space, r);

    sprite_extmap_free(copy);
    g_array_free(copy_list, true);
    g_rand_free(r);
    g_free(model);
    sprite_extmap_free(m);
}

/* A few hundred extents over 4 KiB, every window checked. */
static void test_random(void)
{
    RandomParams p = {
        .space = 4096, .iters = 3000, .max_len = 40, .big_len = 4096,
        .big_every = 100, .check_every = 50, .window_every = 1,
        .copy_every = 500,
    };

    run_random(&p);
}

/*
 * Some 20000 small extents over 512 KiB, and now and then a write or a
 * discard of up to 64 KiB: leaves and inner nodes split, even out, merge.
 */
static void test_random_large(void)
{
    RandomParams p = {
        .space = 512 * 1024, .iters = 200000, .max_len = 32,
        .big_len = 64 * 1024, .big_every = 1024, .check_every = 20000,
        .window_every = 1000, .copy_every = 50000,
    };

    run_random(&p);
}

#define SEQ_N       100000
#define SEQ_STRIDE  8192
#define SEQ_LEN     4096

/* The extent slot @k holds when whole. */
static SpriteExtent seq_extent(uint64_t k)
{
    return (SpriteExtent) {
        .start = k * SEQ_STRIDE, .len = SEQ_LEN, .seg = k + 1,
        .data_off = k * SEQ_LEN, .kind = SPRITE_EXT_DATA,
    };
}

/*
 * Check @m against @slots: slot k holds at most one extent, within
 * [k * SEQ_STRIDE, k * SEQ_STRIDE + SEQ_LEN), or none if its len is 0.
 */
static void seq_check(SpriteExtmap *m, const SpriteExtent *slots, GRand *r)
{
    GArray *full = list(m, 0, UINT64_MAX);
    guint i = 0, k;

    for (k = 0; k < SEQ_N; k++) {
        if (slots[k].len) {
            g_assert_cmpuint(i, <, full->len);
            assert_same_extent(&g_array_index(full, SpriteExtent, i),
                               &slots[k]);
            i++;
        }
    }
    g_assert_cmpuint(i, ==, full->len);
    check_access(m, full, r);
    g_array_free(full, true);
}

/*
 * A map of SEQ_N extents built in order (a tree three levels deep), cut
 * by discards of thousands of extents at a time and refilled in random
 * places and orders, then emptied and built again.
 */
static void test_sequential(void)
{
    SpriteExtmap *m = sprite_extmap_new();
    SpriteExtent *slots = g_new0(SpriteExtent, SEQ_N);
    GRand *r = g_rand_new_with_seed(7);
    uint64_t lo, hi, k;
    SpriteExtent e;
    int round;

    for (k = 0; k < SEQ_N; k++) {
        slots[k] = seq_extent(k);
        sprite_extmap_set(m, &slots[k], &lo, &hi);
        g_assert_cmpuint(lo, ==, slots[k].start);
        g_assert_cmpuint(hi, ==, slots[k].start + SEQ_LEN);
    }
    g_assert_cmpuint(sprite_extmap_bytes(m, SPRITE_EXT_DATA), ==,
                     (uint64_t)SEQ_N * SEQ_LEN);
    seq_check(m, slots, r);

    for (round = 0; round < 300; round++) {
        uint64_t a = g_rand_int_range(r, 0, SEQ_N - 1);
        uint64_t b = a + g_rand_int_range(r, 1, 5000);

        b = MIN(b, SEQ_N - 1);

        if (round % 3 != 2) {
            /* Discard from inside slot a to inside slot b. */
            uint64_t r0 = a * SEQ_STRIDE + g_rand_int_range(r, 0, SEQ_STRIDE);
            uint64_t r1 = b * SEQ_STRIDE + g_rand_int_range(r, 0, SEQ_STRIDE);
            SpriteExtent *sa = &slots[a], *sb = &slots[b];

            e = (SpriteExtent) { .start = r0, .len = r1 - r0 };
            sprite_extmap_set(m, &e, NULL, NULL);
            if (sa->len && sa->start < r0) {
                sa->len = MIN(sa->start + sa->len, r0) - sa->start;
            } else {
                sa->len = 0;
            }
            for (k = a + 1; k < b; k++) {
                slots[k].len = 0;
            }
            if (sb->len && sb->start + sb->len > r1) {
                uint64_t s = MAX(sb->start, r1);

                sb->data_off += s - sb->start;
                sb->len = sb->start + sb->len - s;
                sb->start = s;
            } else {
                sb->len = 0;
            }
        } else {
            /* Refill slots a to b, in order, in reverse or interleaved. */
            int order = g_rand_int_range(r, 0, 3);

            for (k = a; k <= b; k++) {
                uint64_t s = order == 0 ? k : order == 1 ? a + b - k
                           : (k - a) % 2 ? a + (k - a) / 2
                           : b - (k - a) / 2;

                slots[s] = seq_extent(s);
                sprite_extmap_set(m, &slots[s], NULL, NULL);
            }
        }
        if (round % 20 == 0) {
            seq_check(m, slots, r);
        }
    }
    seq_check(m, slots, r);

    /* Empty it in one go, and build it again. */
    e = (SpriteExtent) { .start = 0, .len = UINT64_MAX };
    sprite_extmap_set(m, &e, &lo, &hi);
    g_assert_cmpuint(sprite_extmap_count(m), ==, 0);
    g_assert_cmpuint(sprite_extmap_bytes(m, SPRITE_EXT_DATA), ==, 0);
    memset(slots, 0, SEQ_N * sizeof(*slots));
    seq_check(m, slots, r);
    for (k = 0; k < SEQ_N; k += 2) {
        slots[k] = seq_extent(k);
        sprite_extmap_set(m, &slots[k], NULL, NULL);
    }
    seq_check(m, slots, r);

    g_rand_free(r);
    g_free(slots);
    sprite_extmap_free(m);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/extmap/random", test_random);
    g_test_add_func("/extmap/random-large", test_random_large);
    g_test_add_func("/extmap/sequential", test_sequential);
    return g_test_run();
}
