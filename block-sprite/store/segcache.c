/*
 * Sprite segment cache (see segcache.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/segcache.h"
#include "store/segment.h"

/*
 * Read-ahead, in chunks fetched beyond the last one asked for.  A miss
 * where the previous fetch of the segment ended (a sequential read)
 * doubles it, from READAHEAD_START up to READAHEAD_MAX (16 MiB per GET);
 * any other miss fetches only what was asked for.
 */
#define READAHEAD_START 4
#define READAHEAD_MAX 255
/* A fetch larger than this is split into ranged GETs run in parallel... */
#define FETCH_PIECE (2u << 20)
/* ...on up to this many threads. */
#define FETCH_THREADS 4
/* Runs fetched ahead of a sequential reader at once. */
#define PREFETCHERS 2
/* Fetches of a chunk that fails its checksum before it is an error. */
#define REFETCHES 2

/* SpriteSegCache.verified values */
enum { CHUNK_UNKNOWN, CHUNK_VERIFIED, CHUNK_FETCHING };

typedef struct CachedSeg {
    uint64_t seq;
    int fd;
    SpriteSegHeader *h;
    uint8_t *verified;          /* one CHUNK_* per chunk */
    unsigned users;             /* reads in progress: not to be evicted */
    uint32_t next;              /* the chunk after the last fetch */
    uint32_t ahead;             /* the read-ahead of the last fetch */
    uint32_t trigger;           /* a read here prefetches the next run */
    uint64_t bytes;             /* bytes accounted to the cache */
    GList link;                 /* in the LRU list, data = this */
} CachedSeg;

/*
 * @lock protects everything but @os, @volume and @dir, and is dropped
 * while chunks are fetched: other reads go on meanwhile, and a read that
 * needs chunks being fetched waits for @fetched.
 */
struct SpriteSegCache {
    SpriteObjstore *os;
    char *volume;
    char *dir;
    GMutex lock;
    GCond fetched;
    uint64_t limit;
    uint64_t used;
    GHashTable *segs;           /* seq -> CachedSeg */
    GQueue lru;                 /* head: least recently used */

    /*
     * The prefetchers fetch the run of chunks after a sequential read's
     * fetch while the reader consumes it, and the run after that as soon
     * as the reader reaches the run prefetched last (CachedSeg.trigger),
     * so that PREFETCHERS runs are fetched at once.  Requests wait in
     * @prefetch_q, the oldest dropped beyond PREFETCHERS.
     */
    GThread *prefetchers[PREFETCHERS];
    GCond prefetch_wake;
    bool prefetch_stop;
    GQueue prefetch_q;          /* of PrefetchReq */
};

typedef struct PrefetchReq {
    uint64_t seq;
    uint32_t first, last;
} PrefetchReq;

static char *seg_path(SpriteSegCache *c, uint64_t seq)
{
    return g_strdup_printf("%s/%016" G_GINT64_MODIFIER "x", c->dir, seq);
}

static void cached_seg_free(gpointer p)
{
    CachedSeg *s = p;

    if (s->fd >= 0) {
        close(s->fd);
    }
    sprite_seg_header_free(s->h);
    g_free(s->verified);
    g_free(s);
}

/* Drop @s from the cache's tables (not its file). */
static void forget(SpriteSegCache *c, CachedSeg *s)
{
    c->used -= MIN(c->used, s->bytes);
    g_queue_unlink(&c->lru, &s->link);
    g_hash_table_remove(c->segs, &s->seq);
}

/* Track @seq, whose file holds @bytes already, as least recently used. */
static CachedSeg *add_seg(SpriteSegCache *c, uint64_t seq, uint64_t bytes)
{
    CachedSeg *s = g_new0(CachedSeg, 1);

    s->seq = seq;
    s->fd = -1;
    s->trigger = UINT32_MAX;
    s->bytes = bytes;
    s->link.data = s;
    c->used += bytes;
    g_hash_table_insert(c->segs, &s->seq, s);
    g_queue_push_head_link(&c->lru, &s->link);
    return s;
}

static void evict(SpriteSegCache *c, CachedSeg *keep)
{
    GList *l = c->lru.head;

    while (c->used > c->limit && l) {
        CachedSeg *s = l->data;
        g_autofree char *path = NULL;

        l = l->next;
        if (s == keep || s->users) {
            continue;
        }
        path = seg_path(c, s->seq);
        unlink(path);
        forget(c, s);
    }
}

static void touch(SpriteSegCache *c, CachedSeg *s)
{
    g_queue_unlink(&c->lru, &s->link);
    g_queue_push_tail_link(&c->lru, &s->link);
}

/* A read or a prefetch of @s is done with it.  Called with c->lock held. */
static void unpin(SpriteSegCache *c, CachedSeg *s)
{
    if (--s->users == 0) {
        g_cond_broadcast(&c->fetched);    /* for sprite_segcache_drop_all() */
    }
}

static void account(SpriteSegCache *c, CachedSeg *s, uint64_t bytes)
{
    s->bytes += bytes;
    c->used += bytes;
    evict(c, s);
}

static gpointer prefetch_main(gpointer opaque);

int sprite_segcache_open(SpriteObjstore *os, const char *volume,
                         const char *dir, uint64_t limit,
                         SpriteSegCache **out, GError **errp)
{
    SpriteSegCache *c;
    DIR *d;
    struct dirent *de;
    int i;

    if (g_mkdir_with_parents(dir, 0700) < 0) {
        int err = errno;
        g_set_error(errp, SPRITE_ERROR, err, "cannot create cache "
                    "directory %s: %s", dir, g_strerror(err));
        return -err;
    }
    c = g_new0(SpriteSegCache, 1);
    c->os = os;
    c->volume = g_strdup(volume);
    c->dir = g_strdup(dir);
    c->limit = limit;
    g_mutex_init(&c->lock);
    g_cond_init(&c->fetched);
    g_cond_init(&c->prefetch_wake);
    c->segs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                    cached_seg_free);
    g_queue_init(&c->lru);

    /* What an earlier run left counts against the bound. */
    d = opendir(dir);
    while (d && (de = readdir(d))) {
        struct stat st;
        g_autofree char *p = g_strdup_printf("%s/%s", dir, de->d_name);
        uint64_t seq;

        if (sprite_key_parse_seq(p, &seq) && stat(p, &st) == 0) {
            add_seg(c, seq, (uint64_t)st.st_blocks * 512);
        }
    }
    if (d) {
        closedir(d);
    }
    for (i = 0; i < PREFETCHERS; i++) {
        c->prefetchers[i] = g_thread_new("sprite-prefetch", prefetch_main, c);
    }
    *out = c;
    return 0;
}

void sprite_segcache_close(SpriteSegCache *c)
{
    if (c) {
        int i;

        g_mutex_lock(&c->lock);
        c->prefetch_stop = true;
        g_cond_broadcast(&c->prefetch_wake);
        g_mutex_unlock(&c->lock);
        for (i = 0; i < PREFETCHERS; i++) {
            g_thread_join(c->prefetchers[i]);
        }
        g_queue_clear_full(&c->prefetch_q, g_free);
        g_hash_table_destroy(c->segs);
        g_mutex_clear(&c->lock);
        g_cond_clear(&c->fetched);
        g_cond_clear(&c->prefetch_wake);
        g_free(c->volume);
        g_free(c->dir);
        g_free(c);
    }
}

void sprite_segcache_drop_all(SpriteSegCache *c)
{
    GHashTableIter it;
    gpointer v;

    g_mutex_lock(&c->lock);
    /* No prefetch may start, nor one under way use what is freed here. */
    g_queue_clear_full(&c->prefetch_q, g_free);
    for (;;) {
        bool busy = false;

        g_hash_table_iter_init(&it, c->segs);
        while (!busy && g_hash_table_iter_next(&it, NULL, &v)) {
            busy = ((CachedSeg *)v)->users > 0;
        }
        if (!busy) {
            break;
        }
        g_cond_wait(&c->fetched, &c->lock);
    }
    g_hash_table_iter_init(&it, c->segs);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        CachedSeg *s = v;
        g_autofree char *path = seg_path(c, s->seq);

        unlink(path);
    }
    g_hash_table_remove_all(c->segs);
    g_queue_init(&c->lru);
    c->used = 0;
    g_mutex_unlock(&c->lock);
}

void sprite_segcache_drop(SpriteSegCache *c, uint64_t seq)
{
    CachedSeg *s;

    g_mutex_lock(&c->lock);
    s = g_hash_table_lookup(c->segs, &seq);
    if (s && !s->users) {
        g_autofree char *path = seg_path(c, seq);

        unlink(path);
        forget(c, s);
    }
    g_mutex_unlock(&c->lock);
}

uint64_t sprite_segcache_used(SpriteSegCache *c)
{
    uint64_t used;

    g_mutex_lock(&c->lock);
    used = c->used;
    g_mutex_unlock(&c->lock);
    return used;
}

static int io_error(int err, GError **errp, const char *what,
                    const char *path)
{
    g_set_error(errp, SPRITE_ERROR, err, "cache %s %s: %s", what, path,
                g_strerror(err));
    return -err;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, off + done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -errno;
        }
        if (n == 0) {
            memset((uint8_t *)buf + done, 0, len - done);
            break;
        }
        done += n;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pwrite(fd, (const uint8_t *)buf + done, len - done,
                           off + done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -errno;
        }
        done += n;
    }
    return 0;
}

/* Fetch [@off, @off + @len) of segment @seq, which must all exist. */
static int fetch(SpriteSegCache *c, uint64_t seq, uint64_t off, size_t len,
                 void *buf, GError **errp)
{
    g_autofree char *key = sprite_key_segment(c->volume, seq);
    size_t got;
    int ret;

    ret = sprite_objstore_get(c->os, key, off, len, buf, &got, errp);
    if (ret == -ENOENT) {
        g_clear_error(errp);
        g_set_error(errp, SPRITE_ERROR, EIO, "segment %s is missing from "
                    "%s", key, sprite_objstore_describe(c->os));
        return -EIO;
    }
    if (ret < 0) {
        return ret;
    }
    if (got != len) {
        g_set_error(errp, SPRITE_ERROR, EIO, "segment %s is truncated "
                    "(%zu bytes at %" G_GUINT64_FORMAT ", wanted %zu)",
                    key, got, off, len);
        return -EIO;
    }
    return 0;
}

typedef struct Fetcher {
    SpriteSegCache *c;
    uint64_t seq;
    uint64_t off;               /* of the whole fetch */
    uint64_t len;
    uint8_t *buf;
    unsigned first, step;       /* the pieces this thread fetches */
    int ret;
    GError *err;
} Fetcher;

static gpointer fetch_pieces(gpointer opaque)
{
    Fetcher *f = opaque;
    uint64_t at;

    for (at = (uint64_t)f->first * FETCH_PIECE; at < f->len && f->ret == 0;
         at += (uint64_t)f->step * FETCH_PIECE) {
        f->ret = fetch(f->c, f->seq, f->off + at,
                       MIN(FETCH_PIECE, f->len - at), f->buf + at, &f->err);
    }
    return NULL;
}

/*
 * fetch(), as several ranged GETs in flight when @len is large: one
 * stream of GETs leaves most of a store's throughput unused.
 */
static int fetch_parallel(SpriteSegCache *c, uint64_t seq, uint64_t off,
                          uint64_t len, uint8_t *buf, GError **errp)
{
    unsigned n = MIN(FETCH_THREADS, (len + FETCH_PIECE - 1) / FETCH_PIECE);
    Fetcher f[FETCH_THREADS];
    GThread *t[FETCH_THREADS] = { NULL };
    unsigned i;
    int ret = 0;

    if (n <= 1) {
        return fetch(c, seq, off, len, buf, errp);
    }
    for (i = 0; i < n; i++) {
        f[i] = (Fetcher){ .c = c, .seq = seq, .off = off, .len = len,
                          .buf = buf, .first = i, .step = n };
        if (i > 0) {
            t[i] = g_thread_new("sprite-fetch", fetch_pieces, &f[i]);
        }
    }
    fetch_pieces(&f[0]);
    for (i = 0; i < n; i++) {
        if (t[i]) {
            g_thread_join(t[i]);
        }
        if (f[i].ret < 0 && ret == 0) {
            ret = f[i].ret;
            g_propagate_error(errp, f[i].err);
        } else {
            g_clear_error(&f[i].err);
        }
    }
    return ret;
}

static int load(SpriteSegCache *c, uint64_t seq, CachedSeg **out,
                GError **errp)
{
    g_autofree char *path = seg_path(c, seq);
    g_autofree uint8_t *buf = NULL;
    CachedSeg *s = g_hash_table_lookup(c->segs, &seq);
    SpriteSegHeader *h = NULL;
    uint32_t need = SPRITE_SEG_ALIGN;
    bool from_cache = true;
    unsigned refetches = 0;
    int fd, ret;

    if (s && s->h) {
        touch(c, s);
        *out = s;
        return 0;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        return io_error(errno, errp, "open", path);
    }
    for (;;) {
        buf = g_realloc(buf, need);
        if (from_cache) {
            ret = pread_full(fd, buf, need, 0);
            if (ret < 0) {
                close(fd);
                return io_error(-ret, errp, "read", path);
            }
        } else {
            ret = fetch(c, seq, 0, need, buf, errp);
            if (ret < 0) {
                close(fd);
                return ret;
            }
        }
        ret = sprite_seg_header_decode(buf, need, seq, &h, &need,
                                       from_cache ? NULL : errp);
        if (ret == -EAGAIN) {
            continue;
        }
        if (ret == 0) {
            break;
        }
        if (!from_cache && (ret != -EIO || ++refetches > REFETCHES)) {
            close(fd);
            return ret;
        }
        /* Not (or not wholly) in the cache, or damaged on the way: fetch. */
        g_clear_error(errp);
        from_cache = false;
        need = SPRITE_SEG_ALIGN;
    }

    if (!s) {
        s = add_seg(c, seq, 0);
    }
    s->fd = fd;
    s->h = h;
    s->verified = g_malloc0(MAX(h->nchunks, 1));
    touch(c, s);
    if (!from_cache) {
        ret = pwrite_full(fd, buf, h->header_len, 0);
        if (ret < 0) {
            forget(c, s);
            return io_error(-ret, errp, "write", path);
        }
        account(c, s, h->header_len);
    }
    *out = s;
    return 0;
}

int sprite_segcache_header(SpriteSegCache *c, uint64_t seq,
                           const SpriteSegHeader **out, GError **errp)
{
    CachedSeg *s;
    int ret;

    g_mutex_lock(&c->lock);
    ret = load(c, seq, &s, errp);
    if (ret == 0) {
        *out = s->h;
    }
    g_mutex_unlock(&c->lock);
    return ret;
}

/*
 * Fetch chunks [@i, @end] of @s, marked CHUNK_FETCHING by the caller,
 * check them and write them to the cache file.  Returns the last chunk
 * that is good (>= @last, or an error): read-ahead into damage keeps
 * what is good.  Called without c->lock; the caller pins @s.
 */
static int fetch_run(SpriteSegCache *c, CachedSeg *s, uint32_t i,
                     uint32_t end, uint32_t last, uint32_t *good,
                     GError **errp)
{
    const SpriteSegHeader *h = s->h;
    uint64_t off = (uint64_t)i * SPRITE_CHUNK_SIZE;
    uint64_t len = (uint64_t)(end - i) * SPRITE_CHUNK_SIZE +
                   sprite_seg_chunk_len(h, end);
    g_autofree uint8_t *buf = g_malloc(len);
    unsigned refetches = 0;
    uint32_t j;
    int ret;

    for (;;) {
        ret = fetch_parallel(c, s->seq, h->header_len + off, len, buf, errp);
        if (ret < 0) {
            return ret;
        }
        if (sprite_seg_chunk_ok(h, i, buf) || ++refetches > REFETCHES) {
            break;
        }
        /* Perhaps damaged on the way: ask once more. */
    }
    for (j = i; j <= end; j++) {
        if (sprite_seg_chunk_ok(h, j, buf + (uint64_t)(j - i) *
                                SPRITE_CHUNK_SIZE)) {
            continue;
        }
        if (j > last) {
            end = j - 1;
            len = (uint64_t)(end - i + 1) * SPRITE_CHUNK_SIZE;
            break;
        }
        g_set_error(errp, SPRITE_ERROR, EIO, "segment %016"
                    G_GINT64_MODIFIER "x: chunk %u does not match its "
                    "checksum (corrupt object)", s->seq, j);
        return -EIO;
    }
    ret = pwrite_full(s->fd, buf, len, h->header_len + off);
    if (ret < 0) {
        g_autofree char *path = seg_path(c, s->seq);
        return io_error(-ret, errp, "write", path);
    }
    *good = end;
    return 0;
}

/*
 * fetch_run() for chunks [@i, @end] of @s, marking them as being
 * fetched meanwhile: called with c->lock held and @s pinned, drops the
 * lock while fetching.  Sets *@good as fetch_run() does.
 */
static int fetch_locked(SpriteSegCache *c, CachedSeg *s, uint32_t i,
                        uint32_t end, uint32_t last, uint32_t *good,
                        GError **errp)
{
    int ret;

    memset(s->verified + i, CHUNK_FETCHING, end - i + 1);
    g_mutex_unlock(&c->lock);
    ret = fetch_run(c, s, i, end, last, good, errp);
    g_mutex_lock(&c->lock);
    memset(s->verified + i, CHUNK_UNKNOWN, end - i + 1);
    if (ret == 0) {
        memset(s->verified + i, CHUNK_VERIFIED, *good - i + 1);
        account(c, s, (uint64_t)(*good - i + 1) * SPRITE_CHUNK_SIZE);
    }
    g_cond_broadcast(&c->fetched);
    return ret;
}

/*
 * Prefetch the run of s->ahead chunks from s->next.  Called with c->lock
 * held.
 */
static void prefetch_next_run(SpriteSegCache *c, CachedSeg *s)
{
    PrefetchReq *r;

    if (!s->ahead || s->next >= s->h->nchunks) {
        s->trigger = UINT32_MAX;
        return;
    }
    r = g_new(PrefetchReq, 1);
    r->seq = s->seq;
    r->first = s->next;
    r->last = MIN(s->h->nchunks - 1, (uint64_t)s->next + s->ahead - 1);
    g_queue_push_tail(&c->prefetch_q, r);
    if (c->prefetch_q.length > PREFETCHERS) {
        g_free(g_queue_pop_head(&c->prefetch_q));
    }
    s->trigger = s->next;
    s->next = r->last + 1;
    g_cond_signal(&c->prefetch_wake);
}

/*
 * Make chunks [@first, @last] of @s present and verified.  Called with
 * c->lock held and @s pinned (s->users); drops the lock while fetching.
 */
static int fill_chunks(SpriteSegCache *c, CachedSeg *s, uint32_t first,
                       uint32_t last, GError **errp)
{
    const SpriteSegHeader *h = s->h;
    g_autofree uint8_t *buf = g_malloc(SPRITE_CHUNK_SIZE);
    uint32_t i = first;

    while (i <= last) {
        uint32_t j, end, good;
        int ret;

        if (i == s->trigger) {
            /* Still sequential: read further ahead. */
            s->ahead = MIN(s->ahead * 2, READAHEAD_MAX);
            prefetch_next_run(c, s);
        }
        if (s->verified[i] == CHUNK_VERIFIED) {
            i++;
            continue;
        }
        if (s->verified[i] == CHUNK_FETCHING) {
            /* Another read is fetching it. */
            g_cond_wait(&c->fetched, &c->lock);
            continue;
        }
        /* Already in the cache file? */
        ret = pread_full(s->fd, buf, sprite_seg_chunk_len(h, i),
                         h->header_len + (uint64_t)i * SPRITE_CHUNK_SIZE);
        if (ret == 0 && sprite_seg_chunk_ok(h, i, buf)) {
            s->verified[i] = CHUNK_VERIFIED;
            i++;
            continue;
        }
        /*
         * Fetch a run of missing chunks, reading ahead past @last when
         * the read is sequential: it starts where the last fetch ended,
         * or overtook the prefetcher.
         */
        s->ahead = i != s->next && (i < s->trigger || i > s->next) ? 0 :
                   MIN(MAX(s->ahead * 2, READAHEAD_START), READAHEAD_MAX);
        end = MIN(h->nchunks - 1, (uint64_t)last + s->ahead);
        for (j = i + 1; j <= end && s->verified[j] == CHUNK_UNKNOWN; j++) {
            /* extend the run over chunks not known to be present */
        }
        end = j - 1;
        s->next = end + 1;
        ret = fetch_locked(c, s, i, end, last, &good, errp);
        if (ret < 0) {
            return ret;
        }
        /* Sequential: fetch the next run while this one is read. */
        s->next = good + 1;
        prefetch_next_run(c, s);
        i = good + 1;
    }
    return 0;
}

static gpointer prefetch_main(gpointer opaque)
{
    SpriteSegCache *c = opaque;

    g_mutex_lock(&c->lock);
    while (!c->prefetch_stop) {
        g_autofree PrefetchReq *r = NULL;
        CachedSeg *s;
        uint32_t i, end, good;

        r = g_queue_pop_head(&c->prefetch_q);
        if (!r) {
            g_cond_wait(&c->prefetch_wake, &c->lock);
            continue;
        }
        s = g_hash_table_lookup(c->segs, &r->seq);
        if (!s || !s->h) {
            continue;       /* evicted meanwhile */
        }
        i = r->first;
        while (i <= r->last && s->verified[i] != CHUNK_UNKNOWN) {
            i++;
        }
        for (end = i; end < r->last &&
             s->verified[end + 1] == CHUNK_UNKNOWN; end++) {
            /* the run of chunks nobody has or fetches */
        }
        if (i <= r->last) {
            s->users++;
            /* A failure only leaves the chunks to the reader. */
            fetch_locked(c, s, i, end, i, &good, NULL);
            unpin(c, s);
        }
    }
    g_mutex_unlock(&c->lock);
    return NULL;
}

/* Called with c->lock held */
static bool in_data(const CachedSeg *s, uint64_t data_off, uint64_t len)
{
    return data_off <= s->h->data_len && len <= s->h->data_len - data_off;
}

/*
 * Read checked data of @s, which the caller pinned (s->users), without
 * the cache's lock, so that reads of the cache run side by side.  Called
 * with c->lock held; it is held again on return.
 */
static int pread_pinned(SpriteSegCache *c, CachedSeg *s, uint64_t data_off,
                        uint64_t len, void *buf)
{
    int ret;

    g_mutex_unlock(&c->lock);
    ret = pread_full(s->fd, buf, len, s->h->header_len + data_off);
    g_mutex_lock(&c->lock);
    return ret;
}

static int segcache_read(SpriteSegCache *c, uint64_t seq, uint64_t data_off,
                         uint64_t len, void *buf, GError **errp)
{
    CachedSeg *s;
    int ret;

    ret = load(c, seq, &s, errp);
    if (ret < 0) {
        return ret;
    }
    if (!in_data(s, data_off, len)) {
        g_set_error(errp, SPRITE_ERROR, EIO, "segment %016"
                    G_GINT64_MODIFIER "x: read past its data (corrupt "
                    "metadata)", seq);
        return -EIO;
    }
    if (len == 0) {
        return 0;
    }
    s->users++;
    ret = fill_chunks(c, s, data_off / SPRITE_CHUNK_SIZE,
                      (data_off + len - 1) / SPRITE_CHUNK_SIZE, errp);
    if (ret == 0 && buf) {
        ret = pread_pinned(c, s, data_off, len, buf);
        if (ret < 0) {
            g_autofree char *path = seg_path(c, seq);
            ret = io_error(-ret, errp, "read", path);
        }
    }
    unpin(c, s);
    return ret;
}

int sprite_segcache_read(SpriteSegCache *c, uint64_t seq, uint64_t data_off,
                         uint64_t len, void *buf, GError **errp)
{
    int ret;

    g_mutex_lock(&c->lock);
    ret = segcache_read(c, seq, data_off, len, buf, errp);
    g_mutex_unlock(&c->lock);
    return ret;
}

int sprite_segcache_fetch(SpriteSegCache *c, uint64_t seq, uint64_t data_off,
                          uint64_t len, GError **errp)
{
    return sprite_segcache_read(c, seq, data_off, len, NULL, errp);
}

bool sprite_segcache_mostly_cached(SpriteSegCache *c, uint64_t seq)
{
    CachedSeg *s;
    bool has;

    g_mutex_lock(&c->lock);
    s = g_hash_table_lookup(c->segs, &seq);
    if (!s) {
        has = false;
    } else if (!s->h) {
        /* A file found at open has not had its header read yet. */
        has = s->bytes > SPRITE_CHUNK_SIZE;
    } else {
        has = (s->bytes - MIN(s->bytes, s->h->header_len)) * 2 >=
              s->h->data_len;
    }
    g_mutex_unlock(&c->lock);
    return has;
}

int sprite_segcache_read_cached(SpriteSegCache *c, uint64_t seq,
                                uint64_t data_off, uint64_t len, void *buf)
{
    CachedSeg *s;
    uint32_t i;
    int ret = -EAGAIN;

    if (!g_mutex_trylock(&c->lock)) {
        return -EAGAIN;
    }
    s = g_hash_table_lookup(c->segs, &seq);
    if (!s || !s->h || s->fd < 0 || len == 0 || !in_data(s, data_off, len)) {
        goto out;
    }
    for (i = data_off / SPRITE_CHUNK_SIZE;
         i <= (data_off + len - 1) / SPRITE_CHUNK_SIZE; i++) {
        /* At the trigger, the slow path prefetches the next run. */
        if (s->verified[i] != CHUNK_VERIFIED || i == s->trigger) {
            goto out;
        }
    }
    s->users++;
    touch(c, s);
    ret = pread_pinned(c, s, data_off, len, buf);
    unpin(c, s);
out:
    g_mutex_unlock(&c->lock);
    return ret < 0 ? ret : 0;
}

/* Called with c->lock held */
static int segcache_insert(SpriteSegCache *c, uint64_t seq, const void *obj,
                           size_t len, GError **errp)
{
    g_autofree char *path = seg_path(c, seq);
    CachedSeg *s;
    int fd, ret;

    s = g_hash_table_lookup(c->segs, &seq);
    if (s) {
        forget(c, s);
    }
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return io_error(errno, errp, "open", path);
    }
    ret = pwrite_full(fd, obj, len, 0);
    close(fd);
    if (ret < 0) {
        unlink(path);
        return io_error(-ret, errp, "write", path);
    }
    ret = load(c, seq, &s, errp);
    if (ret < 0) {
        return ret;
    }
    /* We just wrote these bytes: no need to check them again. */
    memset(s->verified, CHUNK_VERIFIED, s->h->nchunks);
    account(c, s, len);
    return 0;
}

int sprite_segcache_adopt(SpriteSegCache *c, uint64_t seq, const char *path,
                          size_t len, GError **errp)
{
    g_autofree char *dest = seg_path(c, seq);
    CachedSeg *s;
    int ret;

    g_mutex_lock(&c->lock);
    s = g_hash_table_lookup(c->segs, &seq);
    if (s) {
        forget(c, s);
    }
    if (rename(path, dest) < 0) {
        ret = io_error(errno, errp, "rename", path);
        goto out;
    }
    ret = load(c, seq, &s, errp);
    if (ret == 0) {
        /* The writer's own bytes: no need to check them again. */
        memset(s->verified, CHUNK_VERIFIED, s->h->nchunks);
        account(c, s, len);
    }
out:
    g_mutex_unlock(&c->lock);
    return ret;
}

int sprite_segcache_insert(SpriteSegCache *c, uint64_t seq,
                           const void *obj, size_t len, GError **errp)
{
    int ret;

    g_mutex_lock(&c->lock);
    ret = segcache_insert(c, seq, obj, len, errp);
    g_mutex_unlock(&c->lock);
    return ret;
}
