/*
 * Sprite volume: garbage collection and compaction
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Only the writer collects, from a complete listing of the volume's keys
 * (a failed or partial listing deletes nothing).  Segment `seq` is
 * garbage when all of these hold (docs/durability.md, I9):
 *   - no extent of the live map, of a checkpoint, of the pending or the
 *     sealed log points into it;
 *   - a metadata snapshot at or after it is on the store, so that no
 *     restore replays it (restore = newest snapshot + later segments);
 *   - it is older than the newest segment, which an open checks for;
 *   - no clone is pinned at or after it (`V/pin/<seq>/...`: a clone
 *     reads the volume as of that segment, replaying it from the newest
 *     snapshot at or before it).
 * A metadata snapshot is garbage when a newer one is on the store and it
 * is not the newest at or before a pin.
 *
 * Garbage is deleted only once it has been garbage for the grace period
 * (SpriteVolumeOptions.gc_grace_ms), counted from when a pass first found
 * it (kept in the database's `garbage` table).  Nothing ever points to
 * garbage again, so a reader that opened the volume at time t (and
 * restored whatever snapshot was newest then) reads only objects that
 * stay until t + grace.
 *
 * Compaction rewrites the live bytes of a segment that is mostly garbage
 * (less than COMPACT_LIVE of its data is live) into the pending log, as
 * if the guest wrote them again, so that the segment becomes garbage as
 * a whole.  Segments that checkpoints point into are left alone: the
 * rewrite changes only the live map, and only the disk.
 */
#include <errno.h>
#include <string.h>

#include "volume/volume-int.h"

/* Compact a segment when less than this fraction of its data is live... */
#define COMPACT_LIVE 0.5
/* ...rewriting at most this many live bytes per pass... */
#define COMPACT_MAX_BYTES (64ULL << 20)
/* ...in reads of at most this many bytes. */
#define COMPACT_PIECE (1u << 20)

G_STATIC_ASSERT(sizeof(gpointer) == sizeof(uint64_t));
#define SEQ_KEY(seq) ((gpointer)(uintptr_t)(seq))
#define KEY_SEQ(p) ((uint64_t)(uintptr_t)(p))

typedef struct SegInfo {
    uint64_t seq;
    uint64_t bytes;             /* header and data */
    uint64_t data_len;
    uint64_t live;              /* bytes the live map points to */
    bool listed;                /* on the store */
    bool held;                  /* a checkpoint or a log points into it */
} SegInfo;

typedef struct Gc {
    SpriteVolume *v;
    GHashTable *segs;           /* seq -> SegInfo */
    GArray *snaps;              /* uint64_t: metadata snapshots listed */
    GArray *pins;               /* uint64_t: pins listed */
    uint64_t seq;               /* the volume's, when the maps were read */
    uint64_t snap_seq;          /* the newest snapshot listed */
    uint64_t max_pin;
} Gc;

static SegInfo *seg_info(Gc *g, uint64_t seq)
{
    SegInfo *s = g_hash_table_lookup(g->segs, SEQ_KEY(seq));

    if (!s) {
        s = g_new0(SegInfo, 1);
        s->seq = seq;
        g_hash_table_insert(g->segs, SEQ_KEY(seq), s);
    }
    return s;
}

static int list_seg_cb(const char *key, uint64_t size, void *opaque)
{
    Gc *g = opaque;
    uint64_t seq;

    if (sprite_key_parse_seq(key, &seq)) {
        SegInfo *s = seg_info(g, seq);

        s->listed = true;
        s->bytes = size;
    }
    return 0;
}

/* Sequence numbers parsed out of listed keys. */
typedef struct SeqList {
    bool (*parse)(const char *key, uint64_t *seq);
    GArray *seqs;
} SeqList;

static int list_seq_cb(const char *key, uint64_t size, void *opaque)
{
    SeqList *l = opaque;
    uint64_t seq;

    if (l->parse(key, &seq)) {
        g_array_append_val(l->seqs, seq);
    }
    return 0;
}

/* List the volume's segments, snapshots and pins; all or nothing. */
static int list_keys(Gc *g, GError **errp)
{
    SpriteVolume *v = g->v;
    static const char *const dirs[] = { "seg", "meta", "pin" };
    SeqList snaps = { sprite_key_parse_seq, g->snaps };
    SeqList pins = { sprite_key_parse_pin, g->pins };
    SpriteObjstoreListFn fns[] = { list_seg_cb, list_seq_cb, list_seq_cb };
    gpointer opaques[] = { g, &snaps, &pins };
    int i, ret;

    for (i = 0; i < 3; i++) {
        g_autofree char *prefix = g_strdup_printf("%s/%s/", v->url->volume,
                                                  dirs[i]);

        ret = sprite_objstore_list(v->os, prefix, NULL, fns[i], opaques[i],
                                   errp);
        if (ret < 0) {
            g_prefix_error(errp, "volume '%s': garbage collection: ",
                           v->url_str);
            return ret;
        }
    }
    for (i = 0; i < (int)g->pins->len; i++) {
        g->max_pin = MAX(g->max_pin, g_array_index(g->pins, uint64_t, i));
    }
    /* What a restore starts from now (the database may claim a snapshot
     * whose upload failed). */
    for (i = 0; i < (int)g->snaps->len; i++) {
        g->snap_seq = MAX(g->snap_seq, g_array_index(g->snaps, uint64_t, i));
    }
    return 0;
}

static bool count_live(const SpriteExtent *e, void *opaque)
{
    Gc *g = opaque;

    if (e->kind == SPRITE_EXT_DATA && e->seg <= g->seq) {
        seg_info(g, e->seg)->live += e->len;
    }
    return true;
}

static bool mark_held(const SpriteExtent *e, void *opaque)
{
    Gc *g = opaque;

    if (e->kind == SPRITE_EXT_DATA && e->seg <= g->seq) {
        seg_info(g, e->seg)->held = true;
    }
    return true;
}

static void mark_held_seq(uint64_t seq, void *opaque)
{
    Gc *g = opaque;

    if (seq <= g->seq) {
        seg_info(g, seq)->held = true;
    }
}

static void segment_row_cb(uint64_t seq, uint32_t header_len,
                           uint64_t data_len, void *opaque)
{
    SegInfo *s = seg_info(opaque, seq);

    s->data_len = data_len;
    if (!s->listed) {
        s->bytes = header_len + data_len;
    }
}

/*
 * What points where: every map of the volume, durable or in memory.
 * Called with v->flush_lock held, so that no segment is applied meanwhile.
 */
static int read_references(Gc *g, GError **errp)
{
    SpriteVolume *v = g->v;
    guint i;
    int ret;

    g_mutex_lock(&v->lock);
    g->seq = v->seq;
    sprite_extmap_foreach(v->map, 0, UINT64_MAX, count_live, g);
    sprite_extmap_foreach(v->pending, 0, UINT64_MAX, mark_held, g);
    if (v->sealed) {
        sprite_extmap_foreach(v->sealed->map, 0, UINT64_MAX, mark_held, g);
    }
    for (i = 0; i < v->ckpts->len; i++) {
        Ckpt *c = g_ptr_array_index(v->ckpts, i);

        if (c->map) {
            sprite_extmap_foreach(c->map, 0, UINT64_MAX, mark_held, g);
        }
    }
    ret = sprite_meta_checkpoint_segments(v->meta, mark_held_seq, g, errp);
    if (ret == 0) {
        ret = sprite_meta_foreach_segment(v->meta, segment_row_cb, g, errp);
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

static bool segment_is_garbage(Gc *g, const SegInfo *s)
{
    return !s->live && !s->held && s->seq <= g->snap_seq &&
           s->seq < g->seq && s->seq > g->max_pin;
}

static bool snapshot_is_garbage(Gc *g, uint64_t seq)
{
    guint i, j;

    if (seq >= g->snap_seq) {
        return false;
    }
    /* Keep the newest snapshot at or before each pin. */
    for (i = 0; i < g->pins->len; i++) {
        uint64_t pin = g_array_index(g->pins, uint64_t, i);
        uint64_t best = 0;

        for (j = 0; j < g->snaps->len; j++) {
            uint64_t s = g_array_index(g->snaps, uint64_t, j);

            if (s <= pin && s > best) {
                best = s;
            }
        }
        if (best == seq) {
            return false;
        }
    }
    return true;
}

static int64_t now_us(void)
{
    return g_get_real_time();
}

/*
 * Note every piece of garbage in the database and return the keys whose
 * grace period is over, in *@due (segments in @due_segs).
 */
static int find_due(Gc *g, GPtrArray *due, GArray *due_segs,
                    SpriteGcStats *st, GError **errp)
{
    SpriteVolume *v = g->v;
    g_autoptr(GHashTable) garbage = g_hash_table_new_full(g_str_hash,
                                                          g_str_equal,
                                                          g_free, NULL);
    int64_t grace = v->gc_grace_ms < 0 ? 0 : v->gc_grace_ms * 1000;
    int64_t now = now_us();
    GHashTableIter it;
    gpointer p;
    guint i;
    int ret = 0;

    g_hash_table_iter_init(&it, g->segs);
    while (g_hash_table_iter_next(&it, NULL, &p)) {
        SegInfo *s = p;

        if (s->listed && segment_is_garbage(g, s)) {
            g_hash_table_add(garbage,
                             sprite_key_segment(v->url->volume, s->seq));
        }
    }
    for (i = 0; i < g->snaps->len; i++) {
        uint64_t seq = g_array_index(g->snaps, uint64_t, i);

        if (snapshot_is_garbage(g, seq)) {
            g_hash_table_add(garbage,
                             sprite_key_snapshot(v->url->volume, seq));
        }
    }

    g_mutex_lock(&v->lock);
    ret = sprite_meta_begin(v->meta, errp);
    g_hash_table_iter_init(&it, garbage);
    while (ret == 0 && g_hash_table_iter_next(&it, &p, NULL)) {
        const char *key = p;
        int64_t since;
        uint64_t seq;

        ret = sprite_meta_garbage_since(v->meta, key, now, &since, errp);
        if (ret < 0) {
            break;
        }
        if (now - since < grace) {
            st->waiting++;
            continue;
        }
        g_ptr_array_add(due, g_strdup(key));
        if (strstr(key, "/seg/") && sprite_key_parse_seq(key, &seq)) {
            g_array_append_val(due_segs, seq);
        }
    }
    if (ret == 0) {
        ret = sprite_meta_garbage_prune(v->meta, garbage, errp);
    }
    if (ret == 0) {
        ret = sprite_meta_commit(v->meta, errp);
    } else {
        sprite_meta_rollback(v->meta);
    }
    g_mutex_unlock(&v->lock);
    return ret;
}

/*
 * Forget segments the store no longer has (deleted by this pass, or by
 * one that failed before it could say so) in the database and the usage
 * figures.
 */
static int forget_segments(Gc *g, GArray *gone, GError **errp)
{
    SpriteVolume *v = g->v;
    guint i;
    int ret;

    g_mutex_lock(&v->lock);
    ret = sprite_meta_begin(v->meta, errp);
    for (i = 0; ret == 0 && i < gone->len; i++) {
        uint64_t seq = g_array_index(gone, uint64_t, i);
        SegInfo *s = seg_info(g, seq);

        ret = sprite_meta_remove_segment(v->meta, seq, errp);
        if (ret == 0) {
            __atomic_sub_fetch(&v->store_bytes,
                               MIN(s->bytes, v->store_bytes),
                               __ATOMIC_RELAXED);
        }
    }
    if (ret == 0) {
        ret = sprite_meta_commit(v->meta, errp);
    } else {
        sprite_meta_rollback(v->meta);
    }
    g_mutex_unlock(&v->lock);
    for (i = 0; i < gone->len; i++) {
        sprite_segcache_drop(v->cache, g_array_index(gone, uint64_t, i));
    }
    return ret;
}

/* Delete what is due, then forget the segments among it. */
static int collect(Gc *g, SpriteGcStats *st, GError **errp)
{
    SpriteVolume *v = g->v;
    g_autoptr(GPtrArray) due = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) due_segs = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autoptr(GArray) gone = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    GHashTableIter it;
    gpointer p;
    guint i;
    int ret;

    /* Rows of segments that an earlier pass deleted but did not forget. */
    g_hash_table_iter_init(&it, g->segs);
    while (g_hash_table_iter_next(&it, NULL, &p)) {
        SegInfo *s = p;

        if (!s->listed && s->bytes &&
            segment_is_garbage(g, s)) {
            g_array_append_val(gone, s->seq);
        }
    }

    ret = find_due(g, due, due_segs, st, errp);
    for (i = 0; ret == 0 && i < due->len; i++) {
        const char *key = g_ptr_array_index(due, i);

        ret = sprite_objstore_delete(v->os, key, errp);
        if (ret < 0) {
            g_prefix_error(errp, "volume '%s': garbage collection: ",
                           v->url_str);
        } else if (strstr(key, "/seg/")) {
            uint64_t seq = 0;

            sprite_key_parse_seq(key, &seq);
            g_array_append_val(gone, seq);
            st->segments++;
            st->bytes += seg_info(g, seq)->bytes;
        } else {
            st->snapshots++;
        }
    }
    /* Even after a failed delete: what is gone is gone. */
    if (gone->len) {
        int r = forget_segments(g, gone, ret < 0 ? NULL : errp);

        ret = ret < 0 ? ret : r;
    }
    return ret;
}

typedef struct Victim {
    uint64_t seq;
    GArray *extents;            /* SpriteExtent: its live bytes */
} Victim;

static gint by_live_fraction(gconstpointer a, gconstpointer b)
{
    const SegInfo *x = *(SegInfo *const *)a, *y = *(SegInfo *const *)b;
    double fx = (double)x->live / x->data_len;
    double fy = (double)y->live / y->data_len;

    return fx < fy ? -1 : fx > fy;
}

typedef struct CollectCtx {
    GHashTable *victims;        /* seq -> Victim */
} CollectCtx;

static bool collect_victim_extents(const SpriteExtent *e, void *opaque)
{
    CollectCtx *c = opaque;
    Victim *vi;

    /* The live VM state area is the newest checkpoint's VM state plus a
     * savevm in progress, whose chunks the volume may still refer to
     * (volume.c): leave it where it is. */
    if (e->kind == SPRITE_EXT_DATA && e->start < SPRITE_VMSTATE_BASE &&
        (vi = g_hash_table_lookup(c->victims, SEQ_KEY(e->seg)))) {
        g_array_append_val(vi->extents, *e);
    }
    return true;
}

static void victim_free(gpointer p)
{
    Victim *vi = p;

    g_array_free(vi->extents, TRUE);
    g_free(vi);
}

/*
 * Rewrite the live bytes of the segments that are mostly garbage.  The
 * next upload makes them garbage; a later pass deletes them.
 */
static int compact(Gc *g, SpriteGcStats *st, GError **errp)
{
    SpriteVolume *v = g->v;
    g_autoptr(GPtrArray) cands = g_ptr_array_new();
    g_autoptr(GHashTable) victims = g_hash_table_new_full(NULL, NULL, NULL,
                                                          victim_free);
    g_autofree uint8_t *buf = NULL;
    CollectCtx cc = { .victims = victims };
    uint64_t budget = COMPACT_MAX_BYTES;
    GHashTableIter it;
    gpointer p;
    guint i, j;
    int ret = 0;

    g_hash_table_iter_init(&it, g->segs);
    while (g_hash_table_iter_next(&it, NULL, &p)) {
        SegInfo *s = p;

        if (s->listed && s->live && !s->held && s->seq > g->max_pin &&
            s->seq <= g->seq && s->live < s->data_len * COMPACT_LIVE) {
            g_ptr_array_add(cands, s);
        }
    }
    g_ptr_array_sort(cands, by_live_fraction);
    for (i = 0; i < cands->len; i++) {
        SegInfo *s = g_ptr_array_index(cands, i);
        Victim *vi;

        if (s->live > budget) {
            continue;
        }
        budget -= s->live;
        vi = g_new0(Victim, 1);
        vi->seq = s->seq;
        vi->extents = g_array_new(FALSE, FALSE, sizeof(SpriteExtent));
        g_hash_table_insert(victims, SEQ_KEY(s->seq), vi);
    }
    if (!g_hash_table_size(victims)) {
        return 0;
    }

    g_mutex_lock(&v->lock);
    sprite_extmap_foreach(v->map, 0, UINT64_MAX, collect_victim_extents, &cc);
    g_mutex_unlock(&v->lock);

    buf = g_malloc(COMPACT_PIECE);
    g_hash_table_iter_init(&it, victims);
    while (ret == 0 && g_hash_table_iter_next(&it, NULL, &p)) {
        Victim *vi = p;

        for (i = 0; ret == 0 && i < vi->extents->len; i++) {
            const SpriteExtent *e = &g_array_index(vi->extents,
                                                   SpriteExtent, i);

            for (j = 0; ret == 0 && (uint64_t)j * COMPACT_PIECE < e->len;
                 j++) {
                uint64_t off = (uint64_t)j * COMPACT_PIECE;
                SpriteExtent piece = *e;

                piece.start += off;
                piece.data_off += off;
                piece.len = MIN(COMPACT_PIECE, e->len - off);
                ret = sprite_segcache_read(v->cache, piece.seg,
                                           piece.data_off, piece.len, buf,
                                           errp);
                if (ret == 0) {
                    ret = sprite_volume_relocate(v, &piece, buf,
                                                 &st->compacted_bytes, errp);
                }
            }
        }
        st->compacted++;
    }
    return ret;
}

int sprite_volume_gc(SpriteVolume *v, bool compaction, SpriteGcStats *stats,
                     GError **errp)
{
    g_autoptr(GHashTable) segs = g_hash_table_new_full(NULL, NULL, NULL,
                                                       g_free);
    g_autoptr(GArray) snaps = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_autoptr(GArray) pins = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    Gc g = { .v = v, .segs = segs, .snaps = snaps, .pins = pins };
    SpriteGcStats st = { 0 };
    int ret;

    if (v->read_only) {
        g_set_error(errp, SPRITE_ERROR, EROFS, "volume '%s' is open "
                    "read-only: only its writer collects garbage",
                    v->url_str);
        return -EROFS;
    }
    g_mutex_lock(&v->gc_lock);
    /* The listing first: what is on the store, then what points there. */
    ret = list_keys(&g, errp);
    if (ret == 0) {
        g_mutex_lock(&v->flush_lock);
        ret = read_references(&g, errp);
        g_mutex_unlock(&v->flush_lock);
    }
    if (ret == 0) {
        ret = collect(&g, &st, errp);
    }
    if (ret == 0 && compaction) {
        ret = compact(&g, &st, errp);
        if (ret == 0 && st.compacted) {
            ret = sprite_volume_flush_all(v, errp);
        }
    }
    g_mutex_unlock(&v->gc_lock);
    if (stats) {
        *stats = st;
    }
    return ret;
}
