/*
 * Sprite extent map (see extmap.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>

#include "meta/extmap.h"

struct SpriteExtmap {
    GTree *tree;                /* uint64_t start -> SpriteExtent */
    uint64_t bytes[3];          /* bytes mapped, by kind */
};

static gint cmp_u64(gconstpointer a, gconstpointer b, gpointer unused)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

SpriteExtmap *sprite_extmap_new(void)
{
    SpriteExtmap *m = g_new0(SpriteExtmap, 1);

    /* The key points into the value, so only the value is freed. */
    m->tree = g_tree_new_full(cmp_u64, NULL, NULL, g_free);
    return m;
}

void sprite_extmap_free(SpriteExtmap *m)
{
    if (m) {
        g_tree_destroy(m->tree);
        g_free(m);
    }
}

void sprite_extmap_clear(SpriteExtmap *m)
{
    g_tree_destroy(m->tree);
    m->tree = g_tree_new_full(cmp_u64, NULL, NULL, g_free);
    memset(m->bytes, 0, sizeof(m->bytes));
}

static void insert(SpriteExtmap *m, const SpriteExtent *e)
{
    SpriteExtent *n = g_memdup2(e, sizeof(*e));

    g_tree_insert(m->tree, &n->start, n);
    m->bytes[n->kind] += n->len;
}

static void remove_ext(SpriteExtmap *m, SpriteExtent *e)
{
    m->bytes[e->kind] -= e->len;
    g_tree_remove(m->tree, &e->start);
}

/* The extent with the greatest start <= @off, or NULL. */
static SpriteExtent *floor_ext(SpriteExtmap *m, uint64_t off)
{
    GTreeNode *n = g_tree_upper_bound(m->tree, &off);

    n = n ? g_tree_node_previous(n) : g_tree_node_last(m->tree);
    return n ? g_tree_node_value(n) : NULL;
}

void sprite_extmap_set(SpriteExtmap *m, const SpriteExtent *e,
                       uint64_t *lo, uint64_t *hi)
{
    uint64_t s = e->start, end = e->start + e->len;
    uint64_t wlo = s, whi = end;
    SpriteExtent *p = floor_ext(m, s);

    /* An extent that starts before @s and reaches into the range. */
    if (p && p->start < s && p->start + p->len > s) {
        uint64_t pend = p->start + p->len;

        wlo = p->start;
        if (pend > end) {
            SpriteExtent tail = *p;

            tail.start = end;
            tail.len = pend - end;
            tail.data_off += end - p->start;
            insert(m, &tail);
            whi = pend;
        }
        m->bytes[p->kind] -= pend - s;
        p->len = s - p->start;
    }

    /* Extents that start inside the range. */
    for (;;) {
        GTreeNode *n = g_tree_lower_bound(m->tree, &s);
        SpriteExtent *c;

        if (!n) {
            break;
        }
        c = g_tree_node_value(n);
        if (c->start >= end) {
            break;
        }
        if (c->start + c->len > end) {
            SpriteExtent tail = *c;

            tail.start = end;
            tail.len = c->start + c->len - end;
            tail.data_off += end - c->start;
            whi = MAX(whi, c->start + c->len);
            remove_ext(m, c);
            insert(m, &tail);
            break;
        }
        remove_ext(m, c);
    }

    if (e->kind != SPRITE_EXT_NONE && e->len > 0) {
        insert(m, e);
    }
    if (lo) {
        *lo = wlo;
    }
    if (hi) {
        *hi = whi;
    }
}

bool sprite_extmap_find(SpriteExtmap *m, uint64_t off, SpriteExtent *out,
                        uint64_t *next)
{
    /* One search: the first extent after @off, and the one before it. */
    GTreeNode *up = g_tree_upper_bound(m->tree, &off);
    GTreeNode *n = up ? g_tree_node_previous(up) : g_tree_node_last(m->tree);
    SpriteExtent *p = n ? g_tree_node_value(n) : NULL;

    if (p && p->start + p->len > off) {
        *out = *p;
        out->start = off;
        out->len = p->start + p->len - off;
        out->data_off += off - p->start;
        return true;
    }
    *next = up ? ((SpriteExtent *)g_tree_node_value(up))->start : UINT64_MAX;
    return false;
}

void sprite_extmap_foreach(SpriteExtmap *m, uint64_t lo, uint64_t hi,
                           bool (*fn)(const SpriteExtent *e, void *opaque),
                           void *opaque)
{
    GTreeNode *n = g_tree_lower_bound(m->tree, &lo);

    for (; n; n = g_tree_node_next(n)) {
        const SpriteExtent *e = g_tree_node_value(n);

        if (e->start >= hi || !fn(e, opaque)) {
            break;
        }
    }
}

guint sprite_extmap_count(SpriteExtmap *m)
{
    return g_tree_nnodes(m->tree);
}

uint64_t sprite_extmap_bytes(SpriteExtmap *m, SpriteExtentKind kind)
{
    return m->bytes[kind];
}

static bool copy_one(const SpriteExtent *e, void *opaque)
{
    insert(opaque, e);
    return true;
}

SpriteExtmap *sprite_extmap_copy(SpriteExtmap *m)
{
    SpriteExtmap *c = sprite_extmap_new();

    sprite_extmap_foreach(m, 0, UINT64_MAX, copy_one, c);
    return c;
}

typedef struct SumCtx {
    uint32_t kind;
    uint64_t bytes;
} SumCtx;

static bool sum_one(const SpriteExtent *e, void *opaque)
{
    SumCtx *c = opaque;

    if (e->kind == c->kind) {
        c->bytes += e->len;
    }
    return true;
}

uint64_t sprite_extmap_bytes_from(SpriteExtmap *m, uint64_t lo,
                                  SpriteExtentKind kind)
{
    SumCtx c = { .kind = kind };

    sprite_extmap_foreach(m, lo, UINT64_MAX, sum_one, &c);
    return c.bytes;
}
