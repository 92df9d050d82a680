/*
 * Sprite extent map (see extmap.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The map is a B+tree of wide nodes, so that finding an extent among a
 * million reads a few cache lines rather than some twenty scattered tree
 * nodes, and an extent costs little more than its own fields.
 *
 * Leaves hold up to LEAF_CAP extents sorted by start, in parallel arrays:
 * the starts, which a search bisects, then the rest of each extent.  They
 * are linked in order for sprite_extmap_foreach().  Inner nodes hold n
 * keys and n + 1 children.  The tree keeps these invariants:
 *
 * - All leaves are m->height levels below the root (the root is a leaf
 *   when the height is 0).
 *
 * - key[i] of an inner node is exactly the smallest start in the subtree
 *   of child[i + 1], so every start in child[i] is below it.  Descending
 *   through the last child whose key is <= @off therefore reaches the leaf
 *   that holds the greatest start <= @off (if any does), and the smallest
 *   key > @off passed on the way is the first start after that leaf.  Any
 *   change to the first start of a leaf updates the key that holds it.
 *
 * - Every node but the root holds at least LEAF_MIN extents or INNER_MIN
 *   keys, except the last leaf, which holds at least one: appending to a
 *   full last leaf starts a new leaf instead of splitting it in the middle,
 *   so that a map filled in order has full leaves.  A node that falls
 *   below its minimum takes from a sibling, or merges with it.
 */
#include <string.h>

#include "meta/extmap.h"

/* A leaf is about 2 KiB, an inner node 1 KiB. */
#define LEAF_CAP    64
#define LEAF_MIN    (LEAF_CAP / 2)
#define INNER_CAP   63                  /* keys, for INNER_CAP + 1 children */
#define INNER_MIN   (INNER_CAP / 2)

/*
 * Inner nodes but the root have 32 children or more, so 2^32 extents
 * need fewer than 8 levels.
 */
#define MAX_HEIGHT  16

/* The fields of a leaf's extent but its start and kind. */
typedef struct LeafVal {
    uint64_t len;
    uint64_t seg;
    uint64_t data_off;
} LeafVal;

typedef struct Leaf {
    struct Leaf *next;          /* the next leaf in order, or NULL */
    unsigned n;                 /* extents held */
    uint8_t kind[LEAF_CAP];     /* SpriteExtentKind */
    uint64_t start[LEAF_CAP];
    LeafVal val[LEAF_CAP];
} Leaf;

typedef struct Inner {
    unsigned n;                 /* keys held */
    uint64_t key[INNER_CAP];
    void *child[INNER_CAP + 1]; /* Inner nodes, or leaves at the bottom */
} Inner;

struct SpriteExtmap {
    void *root;                 /* a Leaf if height is 0, else an Inner */
    unsigned height;            /* levels of inner nodes */
    guint count;                /* extents */
    uint64_t bytes[3];          /* bytes mapped, by kind */
};

/* The way down to a leaf: the inner node at each level, the child taken. */
typedef struct Path {
    Inner *node[MAX_HEIGHT];
    unsigned idx[MAX_HEIGHT];
} Path;

/*
 * How many of the sorted @a[0 .. @n) are <= @key: a bisection that steps
 * with a conditional move, not a branch the CPU would mispredict.
 */
static unsigned count_le(const uint64_t *a, unsigned n, uint64_t key)
{
    const uint64_t *base = a;

    while (n > 1) {
        unsigned half = n / 2;

        base = base[half - 1] <= key ? base + half : base;
        n -= half;
    }
    return base - a + (n == 1 && *base <= key);
}

/*
 * Descend to the leaf that holds the greatest start <= @key, if any does,
 * recording the way in @p if non-NULL.  *@bound receives the first start
 * after that leaf, or UINT64_MAX.
 */
static Leaf *descend(SpriteExtmap *m, uint64_t key, Path *p, uint64_t *bound)
{
    void *node = m->root;
    unsigned lv;

    *bound = UINT64_MAX;
    for (lv = 0; lv < m->height; lv++) {
        Inner *in = node;
        unsigned j = count_le(in->key, in->n, key);

        if (j < in->n) {
            *bound = in->key[j];
        }
        if (p) {
            p->node[lv] = in;
            p->idx[lv] = j;
        }
        node = in->child[j];
    }
    return node;
}

/* The position in @l of the first start >= @key. */
static unsigned leaf_lower(const Leaf *l, uint64_t key)
{
    unsigned i = count_le(l->start, l->n, key);

    return i > 0 && l->start[i - 1] == key ? i - 1 : i;
}

/*
 * The subtree at level @lv of @p (the leaf if @lv is the height) now
 * starts at @key: update the key that holds its start, in the nearest
 * ancestor of which it is not the first child.  There is none if it is
 * the first subtree of the map.
 */
static void set_min(Path *p, unsigned lv, uint64_t key)
{
    while (lv-- > 0) {
        if (p->idx[lv] > 0) {
            p->node[lv]->key[p->idx[lv] - 1] = key;
            return;
        }
    }
}

static void leaf_get(const Leaf *l, unsigned i, SpriteExtent *e)
{
    e->start = l->start[i];
    e->len = l->val[i].len;
    e->seg = l->val[i].seg;
    e->data_off = l->val[i].data_off;
    e->kind = l->kind[i];
}

/* Move @n extents from @si in @src to @di in @dst; the two may overlap. */
static void leaf_move(Leaf *dst, unsigned di, Leaf *src, unsigned si,
                      unsigned n)
{
    memmove(&dst->kind[di], &src->kind[si], n * sizeof(dst->kind[0]));
    memmove(&dst->start[di], &src->start[si], n * sizeof(dst->start[0]));
    memmove(&dst->val[di], &src->val[si], n * sizeof(dst->val[0]));
}

/* Put @e at @i in @l, which has room. */
static void leaf_put(SpriteExtmap *m, Leaf *l, unsigned i,
                     const SpriteExtent *e)
{
    leaf_move(l, i + 1, l, i, l->n - i);
    l->kind[i] = e->kind;
    l->start[i] = e->start;
    l->val[i] = (LeafVal) {
        .len = e->len, .seg = e->seg, .data_off = e->data_off,
    };
    l->n++;
    m->count++;
    m->bytes[e->kind] += e->len;
}

/* Remove the extents at [@i, @j) in @l. */
static void leaf_cut(SpriteExtmap *m, Leaf *l, unsigned i, unsigned j)
{
    unsigned k;

    for (k = i; k < j; k++) {
        m->bytes[l->kind[k]] -= l->val[k].len;
    }
    leaf_move(l, i, l, j, l->n - j);
    l->n -= j - i;
    m->count -= j - i;
}

/* Put @key and, after it, @child at @j in @in, which has room. */
static void inner_put(Inner *in, unsigned j, uint64_t key, void *child)
{
    memmove(&in->key[j + 1], &in->key[j], (in->n - j) * sizeof(in->key[0]));
    memmove(&in->child[j + 2], &in->child[j + 1],
            (in->n - j) * sizeof(in->child[0]));
    in->key[j] = key;
    in->child[j + 1] = child;
    in->n++;
}

/* Remove key @j and the child after it from @in. */
static void inner_cut(Inner *in, unsigned j)
{
    memmove(&in->key[j], &in->key[j + 1],
            (in->n - j - 1) * sizeof(in->key[0]));
    memmove(&in->child[j + 1], &in->child[j + 2],
            (in->n - j - 1) * sizeof(in->child[0]));
    in->n--;
}

/*
 * @right, a new node, follows the node at level @lv of @p and starts at
 * @key: add it to their parent, splitting full nodes on the way up.
 */
static void add_child(SpriteExtmap *m, Path *p, unsigned lv, uint64_t key,
                      void *right)
{
    Inner *root;

    while (lv-- > 0) {
        Inner *in = p->node[lv];
        unsigned j = p->idx[lv];
        Inner *r;
        uint64_t up;

        if (in->n < INNER_CAP) {
            inner_put(in, j, key, right);
            return;
        }
        /* Split in the middle, then add to the half where @key belongs. */
        r = g_new(Inner, 1);
        r->n = INNER_CAP - INNER_MIN - 1;
        memcpy(r->key, &in->key[INNER_MIN + 1], r->n * sizeof(r->key[0]));
        memcpy(r->child, &in->child[INNER_MIN + 1],
               (r->n + 1) * sizeof(r->child[0]));
        up = in->key[INNER_MIN];
        in->n = INNER_MIN;
        if (j <= INNER_MIN) {
            inner_put(in, j, key, right);
        } else {
            inner_put(r, j - INNER_MIN - 1, key, right);
        }
        key = up;
        right = r;
    }

    g_assert(m->height < MAX_HEIGHT);
    root = g_new(Inner, 1);
    root->n = 1;
    root->key[0] = key;
    root->child[0] = m->root;
    root->child[1] = right;
    m->root = root;
    m->height++;
}

/* Add @e at @i in @l, found along @p, splitting @l if it is full. */
static void insert_at(SpriteExtmap *m, Path *p, Leaf *l, unsigned i,
                      const SpriteExtent *e)
{
    Leaf *r = NULL;

    if (l->n == LEAF_CAP) {
        /* Appending to the last leaf starts a new one (see the top). */
        unsigned mid = i == LEAF_CAP && !l->next ? LEAF_CAP : LEAF_MIN;

        r = g_new(Leaf, 1);
        r->n = LEAF_CAP - mid;
        leaf_move(r, 0, l, mid, r->n);
        r->next = l->next;
        l->n = mid;
        l->next = r;
        if (i >= mid) {
            leaf_put(m, r, i - mid, e);
            add_child(m, p, m->height, r->start[0], r);
            return;
        }
    }
    leaf_put(m, l, i, e);
    if (i == 0) {
        set_min(p, m->height, e->start);
    }
    if (r) {
        add_child(m, p, m->height, r->start[0], r);
    }
}

/* Add @e, which overlaps no extent. */
static void insert(SpriteExtmap *m, const SpriteExtent *e)
{
    uint64_t bound;
    Path p;
    Leaf *l = descend(m, e->start, &p, &bound);

    insert_at(m, &p, l, leaf_lower(l, e->start), e);
}

/*
 * Even out the leaves at @t and @t + 1 in @in, or merge them if they fit
 * in one.  Returns true if they were merged.
 */
static bool leaf_pair(Inner *in, unsigned t)
{
    Leaf *a = in->child[t], *b = in->child[t + 1];
    unsigned k;

    if (a->n + b->n <= LEAF_CAP) {
        leaf_move(a, a->n, b, 0, b->n);
        a->n += b->n;
        a->next = b->next;
        g_free(b);
        inner_cut(in, t);
        return true;
    }
    if (a->n > b->n) {
        k = (a->n - b->n) / 2;
        leaf_move(b, k, b, 0, b->n);
        leaf_move(b, 0, a, a->n - k, k);
        a->n -= k;
        b->n += k;
    } else {
        k = (b->n - a->n) / 2;
        leaf_move(a, a->n, b, 0, k);
        leaf_move(b, 0, b, k, b->n - k);
        a->n += k;
        b->n -= k;
    }
    in->key[t] = b->start[0];
    return false;
}

/*
 * Even out the inner nodes at @t and @t + 1 in @in, or merge them if they
 * fit in one.  Returns true if they were merged.
 */
static bool inner_pair(Inner *in, unsigned t)
{
    Inner *a = in->child[t], *b = in->child[t + 1];
    unsigned k;

    if (a->n + 1 + b->n <= INNER_CAP) {
        a->key[a->n] = in->key[t];
        memcpy(&a->key[a->n + 1], b->key, b->n * sizeof(b->key[0]));
        memcpy(&a->child[a->n + 1], b->child,
               (b->n + 1) * sizeof(b->child[0]));
        a->n += b->n + 1;
        g_free(b);
        inner_cut(in, t);
        return true;
    }
    /* Rotate k children through key[t]; one node is short, so k >= 1. */
    if (a->n > b->n) {
        k = (a->n - b->n) / 2;
        memmove(&b->key[k], b->key, b->n * sizeof(b->key[0]));
        memmove(&b->child[k], b->child, (b->n + 1) * sizeof(b->child[0]));
        b->key[k - 1] = in->key[t];
        memcpy(b->key, &a->key[a->n - k + 1], (k - 1) * sizeof(b->key[0]));
        memcpy(b->child, &a->child[a->n - k + 1], k * sizeof(b->child[0]));
        in->key[t] = a->key[a->n - k];
        a->n -= k;
        b->n += k;
    } else {
        k = (b->n - a->n) / 2;
        a->key[a->n] = in->key[t];
        memcpy(&a->key[a->n + 1], b->key, (k - 1) * sizeof(a->key[0]));
        memcpy(&a->child[a->n + 1], b->child, k * sizeof(a->child[0]));
        in->key[t] = b->key[k - 1];
        memmove(b->key, &b->key[k], (b->n - k) * sizeof(b->key[0]));
        memmove(b->child, &b->child[k], (b->n - k + 1) * sizeof(b->child[0]));
        a->n += k;
        b->n -= k;
    }
    return false;
}

/*
 * @l, reached along @p, is not the root and fell below LEAF_MIN extents:
 * even it out with a sibling or merge them, and so on up the tree.
 */
static void rebalance(SpriteExtmap *m, Path *p, Leaf *l)
{
    unsigned lv = m->height - 1;
    unsigned t = p->idx[lv] > 0 ? p->idx[lv] - 1 : 0;
    bool merged = leaf_pair(p->node[lv], t);

    if (t == 0) {
        /* The parent's first leaf may have been empty and start anew. */
        Leaf *first = p->node[lv]->child[0];

        set_min(p, lv, first->start[0]);
    }
    while (merged && lv > 0 && p->node[lv]->n < INNER_MIN) {
        t = p->idx[lv - 1] > 0 ? p->idx[lv - 1] - 1 : 0;
        merged = inner_pair(p->node[lv - 1], t);
        lv--;
    }
    if (((Inner *)m->root)->n == 0) {
        Inner *root = m->root;

        m->root = root->child[0];
        m->height--;
        g_free(root);
    }
}

/*
 * Remove the extents that start in [@s, @end), but for the part past @end
 * of the last one, raising *@whi to its end.  @p, @l, @i and @bound are
 * where descend() and leaf_lower() found @s.  Returns whether anything
 * was removed.
 */
static bool cut_range(SpriteExtmap *m, uint64_t s, uint64_t end, Path *p,
                      Leaf *l, unsigned i, uint64_t bound, uint64_t *whi)
{
    bool changed = false;

    for (;;) {
        unsigned j = i;
        bool done;

        if (i == l->n) {
            /* The next extent, if any, is the first of the next leaf. */
            if (bound >= end) {
                return changed;
            }
            l = descend(m, bound, p, &bound);
            i = j = 0;
        }
        while (j < l->n && l->start[j] < end) {
            j++;
        }
        if (j == i) {
            return changed;
        }
        changed = true;
        done = j < l->n;

        if (l->start[j - 1] + l->val[j - 1].len > end) {
            /* Keep the tail, which still starts before the next extent. */
            uint64_t cs = l->start[j - 1];
            uint64_t cend = cs + l->val[j - 1].len;

            *whi = MAX(*whi, cend);
            m->bytes[l->kind[j - 1]] -= end - cs;
            l->val[j - 1].data_off += end - cs;
            l->val[j - 1].len = cend - end;
            l->start[j - 1] = end;
            j--;
            done = true;
        }
        leaf_cut(m, l, i, j);
        if (i == 0 && l->n > 0) {
            set_min(p, m->height, l->start[0]);
        }

        if (m->height == 0 || l->n >= LEAF_MIN) {
            if (done) {
                return true;
            }
            /* Go on with the next leaf: i is l->n. */
        } else {
            rebalance(m, p, l);
            if (done) {
                return true;
            }
            l = descend(m, s, p, &bound);
            i = leaf_lower(l, s);
        }
    }
}

static void free_node(void *node, unsigned height)
{
    if (height > 0) {
        Inner *in = node;
        unsigned j;

        for (j = 0; j <= in->n; j++) {
            free_node(in->child[j], height - 1);
        }
    }
    g_free(node);
}

SpriteExtmap *sprite_extmap_new(void)
{
    SpriteExtmap *m = g_new0(SpriteExtmap, 1);

    m->root = g_new0(Leaf, 1);
    return m;
}

void sprite_extmap_free(SpriteExtmap *m)
{
    if (m) {
        free_node(m->root, m->height);
        g_free(m);
    }
}

void sprite_extmap_clear(SpriteExtmap *m)
{
    free_node(m->root, m->height);
    m->root = g_new0(Leaf, 1);
    m->height = 0;
    m->count = 0;
    memset(m->bytes, 0, sizeof(m->bytes));
}

void sprite_extmap_set(SpriteExtmap *m, const SpriteExtent *e,
                       uint64_t *lo, uint64_t *hi)
{
    uint64_t s = e->start, end = e->start + e->len;
    uint64_t wlo = s, whi = end;
    SpriteExtent tail = { .len = 0 };
    uint64_t bound;
    Path p;
    Leaf *l = descend(m, s, &p, &bound);
    unsigned i = leaf_lower(l, s);

    /* An extent that starts before @s and reaches into the range. */
    if (i > 0 && l->start[i - 1] + l->val[i - 1].len > s) {
        uint64_t ps = l->start[i - 1];
        uint64_t pend = ps + l->val[i - 1].len;

        wlo = ps;
        if (pend > end) {
            leaf_get(l, i - 1, &tail);
            tail.start = end;
            tail.len = pend - end;
            tail.data_off += end - ps;
            whi = pend;
        }
        m->bytes[l->kind[i - 1]] -= pend - s;
        l->val[i - 1].len = s - ps;
    }

    /* Extents that start inside the range. */
    if (cut_range(m, s, end, &p, l, i, bound, &whi)) {
        l = descend(m, s, &p, &bound);
        i = leaf_lower(l, s);
    }

    if (e->kind != SPRITE_EXT_NONE && e->len > 0) {
        insert_at(m, &p, l, i, e);
    }
    if (tail.len) {
        insert(m, &tail);
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
    uint64_t bound;
    Leaf *l = descend(m, off, NULL, &bound);
    unsigned i = count_le(l->start, l->n, off);

    if (i > 0 && l->start[i - 1] + l->val[i - 1].len > off) {
        leaf_get(l, i - 1, out);
        out->len = out->start + out->len - off;
        out->data_off += off - out->start;
        out->start = off;
        return true;
    }
    *next = i < l->n ? l->start[i] : bound;
    return false;
}

void sprite_extmap_foreach(SpriteExtmap *m, uint64_t lo, uint64_t hi,
                           bool (*fn)(const SpriteExtent *e, void *opaque),
                           void *opaque)
{
    uint64_t bound;
    Leaf *l = descend(m, lo, NULL, &bound);
    unsigned i = leaf_lower(l, lo);

    for (; l; l = l->next, i = 0) {
        for (; i < l->n; i++) {
            SpriteExtent e;

            if (l->start[i] >= hi) {
                return;
            }
            leaf_get(l, i, &e);
            if (!fn(&e, opaque)) {
                return;
            }
        }
    }
}

guint sprite_extmap_count(SpriteExtmap *m)
{
    return m->count;
}

uint64_t sprite_extmap_bytes(SpriteExtmap *m, SpriteExtentKind kind)
{
    return m->bytes[kind];
}

/* Copy @node, with @height levels below it; @last is the last leaf copied. */
static void *copy_node(void *node, unsigned height, Leaf **last)
{
    Inner *in;
    unsigned j;

    if (height == 0) {
        Leaf *l = g_new(Leaf, 1);

        *l = *(Leaf *)node;
        l->next = NULL;
        if (*last) {
            (*last)->next = l;
        }
        *last = l;
        return l;
    }
    in = g_new(Inner, 1);
    *in = *(Inner *)node;
    for (j = 0; j <= in->n; j++) {
        in->child[j] = copy_node(in->child[j], height - 1, last);
    }
    return in;
}

SpriteExtmap *sprite_extmap_copy(SpriteExtmap *m)
{
    SpriteExtmap *c = g_new(SpriteExtmap, 1);
    Leaf *last = NULL;

    *c = *m;
    c->root = copy_node(m->root, m->height, &last);
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
