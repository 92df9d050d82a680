/*
 * Sprite metadata: the local SQLite database of a volume (see meta.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <string.h>
#include <sqlite3.h>
#include <unistd.h>

#include "sprite/objstore.h"
#include "meta/meta.h"

struct SpriteMeta {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *get;
    sqlite3_stmt *set;
    sqlite3_stmt *del_window;
    sqlite3_stmt *ins_extent;
    sqlite3_stmt *ins_segment;
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS volume("
    "  key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS extents("
    "  start INTEGER PRIMARY KEY, length INTEGER NOT NULL,"
    "  kind INTEGER NOT NULL, seg INTEGER NOT NULL,"
    "  data_off INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS segments("
    "  seq INTEGER PRIMARY KEY, header_len INTEGER NOT NULL,"
    "  data_len INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS checkpoints("
    "  id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, info TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS checkpoint_extents("
    "  ckpt INTEGER NOT NULL, start INTEGER NOT NULL,"
    "  length INTEGER NOT NULL, kind INTEGER NOT NULL,"
    "  seg INTEGER NOT NULL, data_off INTEGER NOT NULL,"
    "  PRIMARY KEY (ckpt, start)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS vm_chunks("
    "  ckpt INTEGER NOT NULL, hash BLOB NOT NULL, seg INTEGER NOT NULL,"
    "  data_off INTEGER NOT NULL, length INTEGER NOT NULL,"
    "  PRIMARY KEY (ckpt, hash)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS restore_sets("
    "  ckpt INTEGER NOT NULL, ord INTEGER NOT NULL, unit INTEGER NOT NULL,"
    "  PRIMARY KEY (ckpt, ord)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS garbage("
    "  key TEXT PRIMARY KEY, since INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO volume VALUES ('format', '1');";

static int sql_error(SpriteMeta *m, int rc, const char *what, GError **errp)
{
    g_set_error(errp, SPRITE_ERROR, EIO, "metadata database %s: %s: %s",
                m->path, what, sqlite3_errstr(rc));
    return -EIO;
}

static int exec(SpriteMeta *m, const char *sql, GError **errp)
{
    int rc = sqlite3_exec(m->db, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : sql_error(m, rc, sql, errp);
}

static int prepare(SpriteMeta *m, const char *sql, sqlite3_stmt **st,
                   GError **errp)
{
    int rc = sqlite3_prepare_v3(m->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                                st, NULL);

    return rc == SQLITE_OK ? 0 : sql_error(m, rc, sql, errp);
}

void sprite_meta_close(SpriteMeta *m)
{
    if (!m) {
        return;
    }
    sqlite3_finalize(m->get);
    sqlite3_finalize(m->set);
    sqlite3_finalize(m->del_window);
    sqlite3_finalize(m->ins_extent);
    sqlite3_finalize(m->ins_segment);
    sqlite3_close(m->db);
    g_free(m->path);
    g_free(m);
}

int sprite_meta_open(const char *path, SpriteMeta **out, GError **errp)
{
    SpriteMeta *m = g_new0(SpriteMeta, 1);
    int rc, ret;

    m->path = g_strdup(path);
    rc = sqlite3_open_v2(path, &m->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                         SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        ret = sql_error(m, rc, "open", errp);
        goto fail;
    }
    /*
     * The database is a cache of the object store (segments are the
     * journal), so losing its last commits to a power cut is repaired by
     * rolling forward: NORMAL is enough.
     */
    ret = exec(m, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", errp);
    if (ret < 0) {
        goto fail;
    }
    ret = exec(m, schema, errp);
    if (ret < 0) {
        goto fail;
    }
    if ((ret = prepare(m, "SELECT value FROM volume WHERE key = ?1",
                       &m->get, errp)) < 0 ||
        (ret = prepare(m, "INSERT OR REPLACE INTO volume VALUES (?1, ?2)",
                       &m->set, errp)) < 0 ||
        (ret = prepare(m, "DELETE FROM extents WHERE start >= ?1 AND "
                       "start < ?2", &m->del_window, errp)) < 0 ||
        (ret = prepare(m, "INSERT INTO extents VALUES (?1, ?2, ?3, ?4, ?5)",
                       &m->ins_extent, errp)) < 0 ||
        (ret = prepare(m, "INSERT OR REPLACE INTO segments VALUES "
                       "(?1, ?2, ?3)", &m->ins_segment, errp)) < 0) {
        goto fail;
    }
    *out = m;
    return 0;

fail:
    sprite_meta_close(m);
    return ret;
}

int sprite_meta_get(SpriteMeta *m, const char *key, char **value,
                    GError **errp)
{
    int rc;

    sqlite3_bind_text(m->get, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(m->get);
    if (rc == SQLITE_ROW) {
        *value = g_strdup((const char *)sqlite3_column_text(m->get, 0));
    }
    sqlite3_reset(m->get);
    if (rc == SQLITE_DONE) {
        *value = NULL;
        return -ENOENT;
    }
    return rc == SQLITE_ROW ? 0 : sql_error(m, rc, "read", errp);
}

int sprite_meta_get_u64(SpriteMeta *m, const char *key, uint64_t *value,
                        GError **errp)
{
    g_autofree char *s = NULL;
    int ret = sprite_meta_get(m, key, &s, errp);

    if (ret == 0) {
        *value = g_ascii_strtoull(s, NULL, 10);
    }
    return ret;
}

int sprite_meta_set(SpriteMeta *m, const char *key, const char *value,
                    GError **errp)
{
    int rc;

    sqlite3_bind_text(m->set, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(m->set, 2, value, -1, SQLITE_STATIC);
    rc = sqlite3_step(m->set);
    sqlite3_reset(m->set);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, "write", errp);
}

int sprite_meta_set_u64(SpriteMeta *m, const char *key, uint64_t value,
                        GError **errp)
{
    g_autofree char *s = g_strdup_printf("%" G_GUINT64_FORMAT, value);

    return sprite_meta_set(m, key, s, errp);
}

int sprite_meta_begin(SpriteMeta *m, GError **errp)
{
    return exec(m, "BEGIN IMMEDIATE", errp);
}

int sprite_meta_commit(SpriteMeta *m, GError **errp)
{
    int ret = exec(m, "COMMIT", errp);

    /* A COMMIT that failed (SQLITE_BUSY, say) may leave it open. */
    if (ret < 0 && !sqlite3_get_autocommit(m->db)) {
        sprite_meta_rollback(m);
    }
    return ret;
}

void sprite_meta_rollback(SpriteMeta *m)
{
    sqlite3_exec(m->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Load the extents that @st (bound, one row per extent) selects. */
static int load_extents(SpriteMeta *m, sqlite3_stmt *st, SpriteExtmap *map,
                        GError **errp)
{
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        SpriteExtent e = {
            .start = sqlite3_column_int64(st, 0),
            .len = sqlite3_column_int64(st, 1),
            .kind = sqlite3_column_int(st, 2),
            .seg = sqlite3_column_int64(st, 3),
            .data_off = sqlite3_column_int64(st, 4),
        };
        if (e.len == 0 ||
            (e.kind != SPRITE_EXT_DATA && e.kind != SPRITE_EXT_ZERO)) {
            sqlite3_finalize(st);
            g_set_error(errp, SPRITE_ERROR, EIO,
                        "metadata database %s: invalid extent at %"
                        G_GUINT64_FORMAT, m->path, e.start);
            return -EIO;
        }
        sprite_extmap_set(map, &e, NULL, NULL);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, "load extents", errp);
}

int sprite_meta_load_extents(SpriteMeta *m, SpriteExtmap *map,
                             GError **errp)
{
    sqlite3_stmt *st;
    int ret;

    ret = prepare(m, "SELECT start, length, kind, seg, data_off FROM extents",
                  &st, errp);
    return ret < 0 ? ret : load_extents(m, st, map, errp);
}

int sprite_meta_load_checkpoint(SpriteMeta *m, uint64_t id,
                                SpriteExtmap *map, GError **errp)
{
    sqlite3_stmt *st;
    int ret;

    ret = prepare(m, "SELECT start, length, kind, seg, data_off FROM "
                  "checkpoint_extents WHERE ckpt = ?1", &st, errp);
    if (ret < 0) {
        return ret;
    }
    sqlite3_bind_int64(st, 1, id);
    return load_extents(m, st, map, errp);
}

/* Run @sql with ?1 bound to @a, ?2 to @b and ?3 to @text if non-NULL. */
static int exec_bound(SpriteMeta *m, const char *sql, uint64_t a,
                      uint64_t b, const char *text, GError **errp)
{
    sqlite3_stmt *st;
    int rc, ret;

    ret = prepare(m, sql, &st, errp);
    if (ret < 0) {
        return ret;
    }
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    if (text) {
        sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
    }
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, sql, errp);
}

/* Run query @sql and call @row for each of its rows. */
static int foreach_row(SpriteMeta *m, const char *sql,
                       void (*row)(sqlite3_stmt *st, void *ctx), void *ctx,
                       GError **errp)
{
    sqlite3_stmt *st;
    int rc, ret;

    ret = prepare(m, sql, &st, errp);
    if (ret < 0) {
        return ret;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        row(st, ctx);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, sql, errp);
}

int sprite_meta_add_checkpoint(SpriteMeta *m, uint64_t id, uint64_t seq,
                               const char *info, GError **errp)
{
    int ret;

    ret = exec_bound(m, "INSERT OR REPLACE INTO checkpoints "
                     "VALUES (?1, ?2, ?3)", id, seq, info, errp);
    if (ret == 0) {
        ret = exec_bound(m, "DELETE FROM checkpoint_extents WHERE ckpt = ?1",
                         id, 0, NULL, errp);
    }
    if (ret == 0) {
        ret = exec_bound(m, "INSERT INTO checkpoint_extents SELECT ?1, "
                         "start, length, kind, seg, data_off FROM extents",
                         id, 0, NULL, errp);
    }
    return ret;
}

int sprite_meta_goto_checkpoint(SpriteMeta *m, uint64_t id, GError **errp)
{
    sqlite3_stmt *st;
    int rc, ret;

    ret = prepare(m, "SELECT 1 FROM checkpoints WHERE id = ?1", &st, errp);
    if (ret < 0) {
        return ret;
    }
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) {
        g_set_error(errp, SPRITE_ERROR, EIO, "checkpoint %" G_GUINT64_FORMAT
                    " does not exist", id);
        return -EIO;
    }
    if (rc != SQLITE_ROW) {
        return sql_error(m, rc, "find checkpoint", errp);
    }
    ret = exec(m, "DELETE FROM extents", errp);
    if (ret == 0) {
        ret = exec_bound(m, "INSERT INTO extents SELECT start, length, kind, "
                         "seg, data_off FROM checkpoint_extents WHERE "
                         "ckpt = ?1", id, 0, NULL, errp);
    }
    return ret;
}

int sprite_meta_delete_checkpoint(SpriteMeta *m, uint64_t id, GError **errp)
{
    int ret;

    ret = exec_bound(m, "DELETE FROM checkpoints WHERE id = ?1", id, 0,
                     NULL, errp);
    if (ret == 0) {
        ret = exec_bound(m, "DELETE FROM checkpoint_extents WHERE ckpt = ?1",
                         id, 0, NULL, errp);
    }
    if (ret == 0) {
        ret = exec_bound(m, "DELETE FROM vm_chunks WHERE ckpt = ?1", id, 0,
                         NULL, errp);
    }
    if (ret == 0) {
        ret = exec_bound(m, "DELETE FROM restore_sets WHERE ckpt = ?1", id,
                         0, NULL, errp);
    }
    return ret;
}

int sprite_meta_add_vm_chunks(SpriteMeta *m, uint64_t ckpt,
                              const SpriteChunkRef *refs, size_t n,
                              GError **errp)
{
    sqlite3_stmt *st;
    size_t i;
    int rc = SQLITE_DONE, ret;

    ret = prepare(m, "INSERT OR REPLACE INTO vm_chunks VALUES "
                  "(?1, ?2, ?3, ?4, ?5)", &st, errp);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < n && rc == SQLITE_DONE; i++) {
        sqlite3_bind_int64(st, 1, ckpt);
        sqlite3_bind_blob(st, 2, refs[i].hash, sizeof(refs[i].hash),
                          SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, refs[i].seg);
        sqlite3_bind_int64(st, 4, refs[i].data_off);
        sqlite3_bind_int64(st, 5, refs[i].len);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, "insert VM chunk", errp);
}

typedef struct ChunkRows {
    void (*fn)(const SpriteChunkRef *ref, void *opaque);
    void *opaque;
} ChunkRows;

static void chunk_row(sqlite3_stmt *st, void *ctx)
{
    ChunkRows *c = ctx;
    SpriteChunkRef ref = {
        .seg = sqlite3_column_int64(st, 1),
        .data_off = sqlite3_column_int64(st, 2),
        .len = sqlite3_column_int64(st, 3),
    };

    if (sqlite3_column_bytes(st, 0) == sizeof(ref.hash)) {
        memcpy(ref.hash, sqlite3_column_blob(st, 0), sizeof(ref.hash));
        c->fn(&ref, c->opaque);
    }
}

int sprite_meta_foreach_vm_chunk(SpriteMeta *m, uint64_t ckpt,
                                 void (*fn)(const SpriteChunkRef *ref,
                                            void *opaque),
                                 void *opaque, GError **errp)
{
    ChunkRows c = { fn, opaque };
    g_autofree char *sql = g_strdup_printf(
        "SELECT hash, seg, data_off, length FROM vm_chunks WHERE ckpt = %"
        G_GUINT64_FORMAT, ckpt);

    return foreach_row(m, sql, chunk_row, &c, errp);
}

int sprite_meta_set_restore_set(SpriteMeta *m, uint64_t ckpt,
                                const uint64_t *units, size_t n,
                                GError **errp)
{
    sqlite3_stmt *st;
    size_t i;
    int rc = SQLITE_DONE, ret;

    ret = sprite_meta_begin(m, errp);
    if (ret < 0) {
        return ret;
    }
    ret = exec_bound(m, "DELETE FROM restore_sets WHERE ckpt = ?1", ckpt, 0,
                     NULL, errp);
    if (ret == 0) {
        ret = prepare(m, "INSERT INTO restore_sets VALUES (?1, ?2, ?3)", &st,
                      errp);
    }
    if (ret < 0) {
        sprite_meta_rollback(m);
        return ret;
    }
    for (i = 0; i < n && rc == SQLITE_DONE; i++) {
        sqlite3_bind_int64(st, 1, ckpt);
        sqlite3_bind_int64(st, 2, i);
        sqlite3_bind_int64(st, 3, units[i]);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        sprite_meta_rollback(m);
        return sql_error(m, rc, "insert restore set", errp);
    }
    return sprite_meta_commit(m, errp);
}

static void unit_row(sqlite3_stmt *st, void *ctx)
{
    uint64_t unit = sqlite3_column_int64(st, 0);

    g_array_append_val((GArray *)ctx, unit);
}

int sprite_meta_get_restore_set(SpriteMeta *m, uint64_t ckpt, GArray *units,
                                GError **errp)
{
    g_autofree char *sql = g_strdup_printf(
        "SELECT unit FROM restore_sets WHERE ckpt = %" G_GUINT64_FORMAT
        " ORDER BY ord", ckpt);

    return foreach_row(m, sql, unit_row, units, errp);
}

typedef struct CheckpointRows {
    void (*fn)(uint64_t id, uint64_t seq, const char *info, void *opaque);
    void *opaque;
} CheckpointRows;

static void checkpoint_row(sqlite3_stmt *st, void *ctx)
{
    CheckpointRows *c = ctx;

    c->fn(sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
          (const char *)sqlite3_column_text(st, 2), c->opaque);
}

int sprite_meta_foreach_checkpoint(SpriteMeta *m,
                                   void (*fn)(uint64_t id, uint64_t seq,
                                              const char *info,
                                              void *opaque),
                                   void *opaque, GError **errp)
{
    CheckpointRows c = { fn, opaque };

    return foreach_row(m, "SELECT id, seq, info FROM checkpoints ORDER BY id",
                       checkpoint_row, &c, errp);
}

typedef struct StoreCtx {
    SpriteMeta *m;
    int rc;
} StoreCtx;

static bool store_one(const SpriteExtent *e, void *opaque)
{
    StoreCtx *c = opaque;
    sqlite3_stmt *st = c->m->ins_extent;

    sqlite3_bind_int64(st, 1, e->start);
    sqlite3_bind_int64(st, 2, e->len);
    sqlite3_bind_int(st, 3, e->kind);
    sqlite3_bind_int64(st, 4, e->seg);
    sqlite3_bind_int64(st, 5, e->data_off);
    c->rc = sqlite3_step(st);
    sqlite3_reset(st);
    return c->rc == SQLITE_DONE;
}

int sprite_meta_store_window(SpriteMeta *m, SpriteExtmap *map,
                             uint64_t lo, uint64_t hi, GError **errp)
{
    StoreCtx c = { .m = m, .rc = SQLITE_DONE };
    int rc;

    sqlite3_bind_int64(m->del_window, 1, lo);
    sqlite3_bind_int64(m->del_window, 2, hi);
    rc = sqlite3_step(m->del_window);
    sqlite3_reset(m->del_window);
    if (rc != SQLITE_DONE) {
        return sql_error(m, rc, "delete extents", errp);
    }
    sprite_extmap_foreach(map, lo, hi, store_one, &c);
    return c.rc == SQLITE_DONE ? 0 : sql_error(m, c.rc, "insert extent", errp);
}

int sprite_meta_add_segment(SpriteMeta *m, uint64_t seq,
                            uint32_t header_len, uint64_t data_len,
                            GError **errp)
{
    int rc;

    sqlite3_bind_int64(m->ins_segment, 1, seq);
    sqlite3_bind_int64(m->ins_segment, 2, header_len);
    sqlite3_bind_int64(m->ins_segment, 3, data_len);
    rc = sqlite3_step(m->ins_segment);
    sqlite3_reset(m->ins_segment);
    return rc == SQLITE_DONE ? 0 : sql_error(m, rc, "insert segment", errp);
}

int sprite_meta_segment_bytes(SpriteMeta *m, uint64_t *bytes, GError **errp)
{
    sqlite3_stmt *st;
    int rc, ret;

    ret = prepare(m, "SELECT COALESCE(SUM(header_len + data_len), 0) "
                  "FROM segments", &st, errp);
    if (ret < 0) {
        return ret;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *bytes = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sql_error(m, rc, "sum segments", errp);
}

int sprite_meta_export(SpriteMeta *m, GBytes **out, GError **errp)
{
    g_autofree char *tmp = g_strdup_printf("%s.export", m->path);
    g_autofree char *sql = NULL;
    g_autoptr(GError) local = NULL;
    char *data;
    gsize len;
    int ret;

    unlink(tmp);
    sql = sqlite3_mprintf("VACUUM INTO %Q", tmp);
    ret = exec(m, sql, errp);
    sqlite3_free(g_steal_pointer(&sql));
    if (ret < 0) {
        return ret;
    }
    if (!g_file_get_contents(tmp, &data, &len, &local)) {
        unlink(tmp);
        g_set_error(errp, SPRITE_ERROR, EIO, "metadata export: %s",
                    local->message);
        return -EIO;
    }
    unlink(tmp);
    *out = g_bytes_new_take(data, len);
    return 0;
}

typedef struct SegmentRows {
    void (*fn)(uint64_t seq, uint32_t header_len, uint64_t data_len,
               void *opaque);
    void *opaque;
} SegmentRows;

static void segment_row(sqlite3_stmt *st, void *ctx)
{
    SegmentRows *c = ctx;

    c->fn(sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
          sqlite3_column_int64(st, 2), c->opaque);
}

int sprite_meta_foreach_segment(SpriteMeta *m,
                                void (*fn)(uint64_t seq, uint32_t header_len,
                                           uint64_t data_len, void *opaque),
                                void *opaque, GError **errp)
{
    SegmentRows c = { fn, opaque };

    return foreach_row(m, "SELECT seq, header_len, data_len FROM segments "
                       "ORDER BY seq", segment_row, &c, errp);
}

int sprite_meta_remove_segment(SpriteMeta *m, uint64_t seq, GError **errp)
{
    return exec_bound(m, "DELETE FROM segments WHERE seq = ?1", seq, 0, NULL,
                      errp);
}

typedef struct SeqRows {
    void (*fn)(uint64_t seq, void *opaque);
    void *opaque;
} SeqRows;

static void seq_row(sqlite3_stmt *st, void *ctx)
{
    SeqRows *c = ctx;

    c->fn(sqlite3_column_int64(st, 0), c->opaque);
}

int sprite_meta_checkpoint_segments(SpriteMeta *m,
                                    void (*fn)(uint64_t seq, void *opaque),
                                    void *opaque, GError **errp)
{
    SeqRows c = { fn, opaque };

    return foreach_row(m, "SELECT DISTINCT seg FROM checkpoint_extents "
                       "WHERE kind = 1", seq_row, &c, errp);
}

int sprite_meta_garbage_since(SpriteMeta *m, const char *key, int64_t now,
                              int64_t *since, GError **errp)
{
    sqlite3_stmt *st;
    int rc, ret;

    ret = exec_bound(m, "INSERT OR IGNORE INTO garbage VALUES (?3, ?1)",
                     now, 0, key, errp);
    if (ret < 0) {
        return ret;
    }
    ret = prepare(m, "SELECT since FROM garbage WHERE key = ?1", &st, errp);
    if (ret < 0) {
        return ret;
    }
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *since = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : sql_error(m, rc, "find garbage", errp);
}

typedef struct PruneRows {
    GHashTable *keep;
    GPtrArray *gone;
} PruneRows;

static void prune_row(sqlite3_stmt *st, void *ctx)
{
    PruneRows *c = ctx;
    const char *key = (const char *)sqlite3_column_text(st, 0);

    if (!g_hash_table_contains(c->keep, key)) {
        g_ptr_array_add(c->gone, g_strdup(key));
    }
}

int sprite_meta_garbage_prune(SpriteMeta *m, GHashTable *keep, GError **errp)
{
    g_autoptr(GPtrArray) gone = g_ptr_array_new_with_free_func(g_free);
    PruneRows c = { keep, gone };
    guint i;
    int ret;

    ret = foreach_row(m, "SELECT key FROM garbage", prune_row, &c, errp);
    for (i = 0; ret == 0 && i < gone->len; i++) {
        ret = exec_bound(m, "DELETE FROM garbage WHERE key = ?3", 0, 0,
                         g_ptr_array_index(gone, i), errp);
    }
    return ret;
}
