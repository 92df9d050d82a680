/*
 * Volume API on every backend: the local directory store, Ceph radosgw
 * and s3rver (both started by tests/servers/with-servers).
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sprite/volume.h"
#include "store/segment.h"
#include "volume/volume-int.h"     /* to hold a volume's lock */

typedef struct Backend {
    const char *name;
    char *prefix;           /* URL up to the volume name, with '/' */
    char *key;
    char *secret;
    bool fences;            /* honours If-None-Match */
} Backend;

static Backend backends[3];
static char *tmpdir;
static int counter;

static void setup_backends(void)
{
    const char *kinds[] = { "RGW", "S3RVER" };
    int i;

    tmpdir = g_dir_make_tmp("sprite-test-volume-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    backends[0] = (Backend){
        .name = "file",
        .prefix = g_strdup_printf("sprite+file://%s/store/", tmpdir),
        .fences = true,
    };
    for (i = 0; i < 2; i++) {
        g_autofree char *ev = g_strdup_printf("SPRITE_TEST_%s_ENDPOINT",
                                              kinds[i]);
        g_autofree char *kv = g_strdup_printf("SPRITE_TEST_%s_ACCESS_KEY",
                                              kinds[i]);
        g_autofree char *sv = g_strdup_printf("SPRITE_TEST_%s_SECRET_KEY",
                                              kinds[i]);
        g_autofree char *bv = g_strdup_printf("SPRITE_TEST_%s_BUCKET",
                                              kinds[i]);
        const char *endpoint = g_getenv(ev);

        if (!endpoint) {
            g_printerr("%s is not set: run this test through "
                       "tests/servers/with-servers\n", ev);
            exit(1);
        }
        backends[i + 1] = (Backend){
            .name = i == 0 ? "rgw" : "s3rver",
            .prefix = g_strdup_printf("sprite+http://%s/%s/", endpoint,
                                      g_getenv(bv)),
            .key = g_strdup(g_getenv(kv)),
            .secret = g_strdup(g_getenv(sv)),
            .fences = i == 0,
        };
    }
    g_mkdir_with_parents(g_strdup_printf("%s/store", tmpdir), 0700);
}

/* A fresh volume URL and options with a private cache directory. */
static SpriteVolumeOptions opts(const Backend *b, char **url, char **cache)
{
    *url = g_strdup_printf("%svol-%d-%u", b->prefix, (int)getpid(),
                           counter++);
    *cache = g_strdup_printf("%s/cache-%u", tmpdir, counter++);
    return (SpriteVolumeOptions){
        .url = *url,
        .cache_dir = *cache,
        .access_key_id = b->key,
        .secret_access_key = b->secret,
    };
}

static void fill_random(GRand *r, uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        p[i] = g_rand_int(r);
    }
}

static void read_all_equal(SpriteVolume *v, const uint8_t *model,
                           uint64_t size)
{
    g_autofree uint8_t *buf = g_malloc(size);
    g_autoptr(GError) err = NULL;
    struct iovec iov = { buf, size };

    g_assert_cmpint(sprite_volume_readv(v, 0, size, &iov, 1, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_true(memcmp(buf, model, size) == 0);
}

/* The object store behind volume @url, to inspect or damage objects. */
static SpriteObjstore *open_store(const Backend *b, const char *url,
                                  SpriteUrl **u)
{
    SpriteObjstoreConfig cfg = {
        .access_key_id = b->key,
        .secret_access_key = b->secret,
    };
    g_autoptr(GError) err = NULL;
    SpriteObjstore *os;

    *u = sprite_url_parse(url, &err);
    g_assert_no_error(err);
    cfg.url = *u;
    g_assert_cmpint(sprite_objstore_open(&cfg, &os, &err), ==, 0);
    return os;
}

static void rm_rf(const char *path)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", path);

    g_assert_cmpint(system(cmd), ==, 0);
}

/* Bytes of the files under @path (what `du` counts). */
static uint64_t du(const char *path)
{
    g_autofree char *cmd = g_strdup_printf("du -s -B1 '%s'", path);
    g_autofree char *out = NULL;
    int status;

    g_assert_true(g_spawn_command_line_sync(cmd, &out, NULL, &status, NULL));
    g_assert_true(g_spawn_check_wait_status(status, NULL));
    return g_ascii_strtoull(out, NULL, 10);
}

/*
 * Differential test: random unaligned writes, write-zeroes and discards
 * against a byte array; compared warm, after reopen, and after deleting
 * the cache.
 */
static void test_differential(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 4 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *buf = g_malloc(256 << 10);
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(1234);
    SpriteVolume *v;
    int i;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_no_error(err);
    for (i = 0; i < 300; i++) {
        uint64_t len = g_rand_int_range(r, 1, 256 << 10);
        uint64_t off = g_rand_int_range(r, 0, size - len);
        int op = g_rand_int_range(r, 0, 10);

        if (op < 7) {
            struct iovec iov[2] = { { buf, len / 3 },
                                    { buf + len / 3, len - len / 3 } };

            fill_random(r, buf, len);
            g_assert_cmpint(sprite_volume_writev(v, off, len, iov, 2, &err),
                            ==, 0);
            memcpy(model + off, buf, len);
        } else if (op < 8) {
            g_assert_cmpint(sprite_volume_write_zeroes(v, off, len, &err),
                            ==, 0);
            memset(model + off, 0, len);
        } else if (op < 9) {
            g_assert_cmpint(sprite_volume_discard(v, off, len, &err), ==, 0);
            memset(model + off, 0, len);
        } else {
            g_assert_cmpint(sprite_volume_flush(v, &err), ==, 0);
        }
        g_assert_no_error(err);
        if (i % 50 == 0) {
            read_all_equal(v, model, size);
        }
    }
    read_all_equal(v, model, size);
    g_assert_cmpint(sprite_volume_flush(v, &err), ==, 0);
    sprite_volume_close(v);

    /* Warm cache. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    read_all_equal(v, model, size);
    sprite_volume_close(v);

    /* No cache at all: everything comes from the object store. */
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_no_error(err);
    read_all_equal(v, model, size);
    sprite_volume_close(v);
    g_rand_free(r);
}

/* Writes acknowledged but not flushed may be lost; flushed ones never. */
static void test_flush_durable(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree char *cache2 = g_strdup_printf("%s-other", cache);
    uint8_t a[4096], z[4096];
    struct iovec iov = { a, sizeof(a) };
    g_autoptr(GError) err = NULL;
    SpriteVolume *v, *w;
    SpriteVolumeInfo info;

    memset(a, 0xaa, sizeof(a));
    memset(z, 0, sizeof(z));
    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_writev(v, 8192, 4096, &iov, 1, &err), ==,
                    0);
    g_assert_cmpint(sprite_volume_flush(v, &err), ==, 0);
    sprite_volume_get_info(v, &info);
    g_assert_cmpuint(info.generation, ==, 1);
    g_assert_cmpuint(info.data_bytes, ==, 4096);
    sprite_volume_info_clear(&info);

    /* Another host (another cache) sees the flushed write at once. */
    o.cache_dir = cache2;
    o.read_only = true;
    g_assert_cmpint(sprite_volume_open(&o, &w, &err), ==, 0);
    g_assert_no_error(err);
    {
        uint8_t got[4096];
        struct iovec giov = { got, sizeof(got) };

        g_assert_cmpint(sprite_volume_readv(w, 8192, 4096, &giov, 1, &err),
                        ==, 0);
        g_assert_cmpmem(got, sizeof(got), a, sizeof(a));
        g_assert_cmpint(sprite_volume_readv(w, 0, 4096, &giov, 1, &err),
                        ==, 0);
        g_assert_cmpmem(got, sizeof(got), z, sizeof(z));
    }
    sprite_volume_close(w);
    sprite_volume_close(v);
}

static void test_clone(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 2 << 20;
    g_autofree char *burl = NULL, *bcache = NULL;
    g_autofree char *curl = NULL, *ccache = NULL;
    SpriteVolumeOptions bo = opts(b, &burl, &bcache);
    SpriteVolumeOptions co = opts(b, &curl, &ccache);
    g_autofree uint8_t *model = g_malloc(size);
    g_autofree uint8_t *bmodel = NULL;
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(99);
    struct iovec iov = { model, size };
    SpriteVolume *base, *clone;
    SpriteVolumeInfo info;
    uint8_t patch[1000];
    struct iovec piov = { patch, sizeof(patch) };
    uint64_t pnum;
    unsigned status;

    fill_random(r, model, size);
    g_assert_cmpint(sprite_volume_create(&bo, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&bo, &base, &err), ==, 0);
    g_assert_cmpint(sprite_volume_writev(base, 0, size, &iov, 1, &err), ==,
                    0);
    sprite_volume_close(base);
    bmodel = g_memdup2(model, size);

    /* A clone of any size costs one small object. */
    g_assert_cmpint(sprite_volume_create(&co, 2 * size, burl, NULL, &err),
                    ==, 0);
    g_assert_no_error(err);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_cmpuint(sprite_volume_size(clone), ==, 2 * size);
    model = g_realloc(model, 2 * size);
    memset(model + size, 0, size);
    read_all_equal(clone, model, 2 * size);
    sprite_volume_get_info(clone, &info);
    g_assert_cmpuint(info.data_bytes, ==, 0);
    g_assert_cmpstr(info.base_url, ==, burl);
    sprite_volume_info_clear(&info);

    g_assert_cmpint(sprite_volume_block_status(clone, 0, size, &pnum,
                                               &status, &err), ==, 0);
    g_assert_cmpuint(pnum, ==, size);
    g_assert_cmpuint(status, ==, SPRITE_STATUS_DATA);

    fill_random(r, patch, sizeof(patch));
    g_assert_cmpint(sprite_volume_writev(clone, 5000, sizeof(patch), &piov, 1,
                                         &err), ==, 0);
    memcpy(model + 5000, patch, sizeof(patch));
    g_assert_cmpint(sprite_volume_discard(clone, 100000, 3000, &err), ==, 0);
    memset(model + 100000, 0, 3000);
    g_assert_cmpint(sprite_volume_flush(clone, &err), ==, 0);
    read_all_equal(clone, model, 2 * size);
    sprite_volume_get_info(clone, &info);
    g_assert_cmpuint(info.data_bytes, ==, sizeof(patch));
    sprite_volume_info_clear(&info);
    sprite_volume_close(clone);

    /* The base did not change; the clone survives losing its cache. */
    bo.read_only = true;
    g_assert_cmpint(sprite_volume_open(&bo, &base, &err), ==, 0);
    read_all_equal(base, bmodel, size);
    sprite_volume_close(base);
    rm_rf(ccache);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    read_all_equal(clone, model, 2 * size);
    sprite_volume_close(clone);
    g_rand_free(r);
}

/* Write VM state @vm of @len bytes as savevm does, in order, in pieces. */
static void stream_vmstate(SpriteVolume *v, const uint8_t *vm, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    uint64_t pos;

    for (pos = 0; pos < len; pos += 32768) {
        uint64_t n = MIN(32768, len - pos);
        struct iovec iov = { (uint8_t *)vm + pos, n };

        g_assert_cmpint(sprite_volume_vmstate_writev(v, pos, n, &iov, 1,
                                                     &err), ==, 0);
    }
}

/* Write random VM state of @len bytes. */
static uint8_t *write_vmstate(SpriteVolume *v, GRand *r, uint64_t len)
{
    uint8_t *vm = g_malloc(len);

    fill_random(r, vm, len);
    stream_vmstate(v, vm, len);
    return vm;
}

static void vmstate_equal(SpriteVolume *v, const uint8_t *vm, uint64_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autoptr(GError) err = NULL;
    struct iovec iov = { buf, len };

    g_assert_cmpint(sprite_volume_vmstate_readv(v, 0, len, &iov, 1, &err),
                    ==, 0);
    g_assert_no_error(err);
    g_assert_true(memcmp(buf, vm, len) == 0);
}

/* Random writes to @model and @v. */
static void scribble(SpriteVolume *v, GRand *r, uint8_t *model,
                     uint64_t size, int n)
{
    g_autoptr(GError) err = NULL;
    uint8_t buf[20000];

    while (n-- > 0) {
        uint64_t len = g_rand_int_range(r, 1, sizeof(buf));
        uint64_t off = g_rand_int_range(r, 0, size - len);
        struct iovec iov = { buf, len };

        fill_random(r, buf, len);
        if (g_rand_int_range(r, 0, 5) == 0) {
            g_assert_cmpint(sprite_volume_write_zeroes(v, off, len, &err),
                            ==, 0);
            memset(model + off, 0, len);
        } else {
            g_assert_cmpint(sprite_volume_writev(v, off, len, &iov, 1, &err),
                            ==, 0);
            memcpy(model + off, buf, len);
        }
    }
}

static SpriteCheckpoint *find_listed(SpriteCheckpoint *cks, size_t n,
                                     const char *name)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (g_str_equal(cks[i].name, name)) {
            return &cks[i];
        }
    }
    return NULL;
}

/* Checkpoint @name as @v lists it, without its name. */
static SpriteCheckpoint listed(SpriteVolume *v, const char *name)
{
    SpriteCheckpoint *cks, ck;
    size_t n;

    sprite_volume_checkpoint_list(v, &cks, &n);
    ck = *find_listed(cks, n, name);
    ck.name = NULL;
    sprite_checkpoints_free(cks, n);
    return ck;
}

/* Wait (up to 60 s) until checkpoint @name is durable. */
static void wait_durable(SpriteVolume *v, const char *name)
{
    int64_t deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;

    while (!listed(v, name).durable) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(10000);
    }
}


/* Read VM state [@pos, @pos + @len) and compare it with @vm. */
static void vmstate_range_equal(SpriteVolume *v, const uint8_t *vm,
                                uint64_t pos, uint64_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autoptr(GError) err = NULL;
    struct iovec iov = { buf, len };

    g_assert_cmpint(sprite_volume_vmstate_readv(v, pos, len, &iov, 1, &err),
                    ==, 0);
    g_assert_true(memcmp(buf, vm + pos, len) == 0);
}

/* Go to checkpoint @name: the cache @dir then gets @bytes more by itself. */
static void goto_fetches(SpriteVolume *v, const char *name, const char *dir,
                         uint64_t bytes)
{
    uint64_t before = du(dir);
    int64_t deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(sprite_volume_checkpoint_goto(v, name, &err), ==, 0);
    while (du(dir) < before + bytes) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        g_usleep(20000);
    }
}

/*
 * Restore sets: a goto with an empty cache records the MiB of VM state
 * read after it, in order; a later goto elsewhere fetches them before
 * they are read, and does not record again; so does a clone made from
 * the checkpoint.
 */
static void test_restore_set(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t vmlen = 8 << 20, mib = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree char *cache2 = g_strdup_printf("%s-2", cache);
    g_autofree char *cache3 = g_strdup_printf("%s-3", cache);
    g_autofree char *cache4 = g_strdup_printf("%s-4", cache);
    g_autofree char *cache5 = g_strdup_printf("%s-5", cache);
    g_autofree char *cache6 = g_strdup_printf("%s-6", cache);
    g_autofree char *curl = NULL, *ccache = NULL;
    SpriteVolumeOptions co = opts(b, &curl, &ccache);
    g_autofree uint8_t *vm = NULL;
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(14);
    SpriteCheckpoint c1 = { .name = (char *)"c1", .vm_state_size = vmlen,
                            .icount = -1 };
    SpriteCheckpoint c2 = { .name = (char *)"c2", .vm_state_size = vmlen,
                            .icount = -1 };
    SpriteVolume *v, *clone;
    int i;

    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==,
                    0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    vm = write_vmstate(v, r, vmlen);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==, 0);
    /* Read back where it was written: nothing to record. */
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_range_equal(v, vm, 3 * mib, 4096);
    sprite_volume_close(v);

    /* Another host: units 5, 2, then 6 and 7 read, in that order. */
    o.cache_dir = cache2;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").restore_set_bytes, ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_range_equal(v, vm, 5 * mib + 100, 65536);
    vmstate_range_equal(v, vm, 2 * mib, 4096);
    vmstate_range_equal(v, vm, 6 * mib + mib / 2, mib);
    vmstate_range_equal(v, vm, 5 * mib, 4096);
    sprite_volume_close(v);

    /* A third: the set is listed, and fetched without being read. */
    o.cache_dir = cache3;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").restore_set_bytes, ==, 4 * mib);
    goto_fetches(v, "c1", cache3, 4 * mib);
    /* Its reads elsewhere do not replace the set. */
    vmstate_range_equal(v, vm, 0, vmlen);
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").restore_set_bytes, ==, 4 * mib);
    sprite_volume_close(v);

    /* A deleted checkpoint takes its set along, whatever gets its ID. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "c1", &err), ==,
                    0);
    c1.id = 0;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==, 0);
    g_assert_cmpuint(c1.id, ==, 1);
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").restore_set_bytes, ==, 0);
    sprite_volume_close(v);

    /*
     * A clone made from a checkpoint uses the base checkpoint's set: here
     * units 3 and 4, recorded by a restore of the base elsewhere.
     */
    o.cache_dir = cache4;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_range_equal(v, vm, 3 * mib, 2 * mib);
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_create(&co, 0, url, "c1", &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    g_assert_cmpuint(listed(clone, "c1").restore_set_bytes, ==, 0);
    goto_fetches(clone, "c1", ccache, 2 * mib);
    vmstate_range_equal(clone, vm, 0, vmlen);
    sprite_volume_close(clone);

    /*
     * A goto weighs what the cache holds in bytes: c2's VM state is c1's
     * large segment, not cached here, and three small ones written here
     * (so cached): it records.
     */
    o.cache_dir = cache5;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    for (i = 0; i < 3; i++) {
        struct iovec iov = { vm + (1 + 2 * i) * mib, 4096 };

        fill_random(r, iov.iov_base, iov.iov_len);
        g_assert_cmpint(sprite_volume_vmstate_writev(v, (1 + 2 * i) * mib,
                                                     4096, &iov, 1, &err),
                        ==, 0);
        g_assert_cmpint(sprite_volume_flush_all(v, &err), ==, 0);
    }
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c2, &err), ==, 0);
    g_assert_cmpint(sprite_volume_flush_all(v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c2", &err), ==, 0);
    vmstate_range_equal(v, vm, 4 * mib, 4096);
    sprite_volume_close(v);
    o.cache_dir = cache6;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c2").restore_set_bytes, ==, mib);
    vmstate_range_equal(v, vm, 0, vmlen);
    sprite_volume_close(v);
    g_rand_free(r);
}

/*
 * Checkpoints: disk and VM state frozen and restored, before and after
 * they are durable, after reopening with an empty cache, and as the base
 * of a new volume; bad names and a delete that a clone prevents.
 */
static void test_checkpoints(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 4 << 20, vmlen = 700000;
    g_autofree char *url = NULL, *cache = NULL;
    g_autofree char *curl = NULL, *ccache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    SpriteVolumeOptions co = opts(b, &curl, &ccache);
    g_autofree uint8_t *m1 = NULL, *m2 = NULL;
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *vm1 = NULL, *vm2 = NULL, *zeroes = g_malloc0(vmlen);
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(5);
    SpriteCheckpoint c1 = { .name = (char *)"first", .vm_state_size = vmlen,
                            .date_sec = 1700000000, .vm_clock_nsec = 42,
                            .icount = -1 };
    SpriteCheckpoint c2 = { .name = (char *)"second",
                            .vm_state_size = vmlen / 2, .icount = -1 };
    SpriteCheckpoint *cks, *ck;
    SpriteVolume *v, *clone;
    SpriteVolumeInfo info;
    size_t n;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    scribble(v, r, model, size, 50);
    g_assert_cmpint(sprite_volume_flush(v, &err), ==, 0);
    scribble(v, r, model, size, 50);            /* some not flushed */
    vm1 = write_vmstate(v, r, vmlen);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_cmpuint(c1.id, ==, 1);
    m1 = g_memdup2(model, size);

    /* Listed; the live VM state area still reads as its VM state. */
    sprite_volume_checkpoint_list(v, &cks, &n);
    g_assert_cmpuint(n, ==, 1);
    g_assert_cmpstr(cks[0].name, ==, "first");
    g_assert_cmpuint(cks[0].vm_state_size, ==, vmlen);
    g_assert_cmpuint(cks[0].added_bytes, >=, vmlen);
    sprite_checkpoints_free(cks, n);
    vmstate_equal(v, vm1, vmlen);

    /* The shipper makes it durable without a flush, writes included. */
    wait_durable(v, "first");
    sprite_volume_get_info(v, &info);
    g_assert_cmpuint(info.pending_bytes, ==, 0);
    sprite_volume_info_clear(&info);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==,
                    -EEXIST);
    g_clear_error(&err);

    /* Change things, go back before anything was uploaded. */
    scribble(v, r, model, size, 50);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "first", &err), ==, 0);
    read_all_equal(v, m1, size);
    vmstate_equal(v, vm1, vmlen);
    memcpy(model, m1, size);

    /* Diverge from it, take a second one, make both durable. */
    scribble(v, r, model, size, 50);
    vm2 = write_vmstate(v, r, vmlen / 2);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c2, &err), ==, 0);
    g_assert_cmpuint(c2.id, ==, 2);
    m2 = g_memdup2(model, size);
    scribble(v, r, model, size, 20);
    g_assert_cmpint(sprite_volume_flush(v, &err), ==, 0);
    sprite_volume_checkpoint_list(v, &cks, &n);
    g_assert_cmpuint(n, ==, 2);
    g_assert_true(cks[0].durable && cks[1].durable);
    sprite_checkpoints_free(cks, n);
    sprite_volume_close(v);

    /* Another host: an empty cache, the object store alone. */
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_no_error(err);
    read_all_equal(v, model, size);
    sprite_volume_checkpoint_list(v, &cks, &n);
    g_assert_cmpuint(n, ==, 2);
    ck = find_listed(cks, n, "first");
    g_assert_nonnull(ck);
    g_assert_cmpuint(ck->id, ==, 1);
    g_assert_cmpint(ck->date_sec, ==, 1700000000);
    g_assert_cmpint(ck->vm_clock_nsec, ==, 42);
    g_assert_cmpint(ck->icount, ==, -1);
    g_assert_cmpuint(ck->size, ==, size);
    g_assert_true(ck->durable);
    sprite_checkpoints_free(cks, n);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "1", &err), ==, 0);
    read_all_equal(v, m1, size);
    vmstate_equal(v, vm1, vmlen);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "second", &err), ==, 0);
    read_all_equal(v, m2, size);
    vmstate_equal(v, vm2, vmlen / 2);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "nope", &err), ==,
                    -ENOENT);
    g_assert_nonnull(strstr(err->message, "nope"));
    g_clear_error(&err);

    /* Deleting is durable too. */
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "first", &err),
                    ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "first", &err),
                    ==, -ENOENT);
    g_clear_error(&err);
    sprite_volume_close(v);
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    read_all_equal(v, m2, size);
    sprite_volume_checkpoint_list(v, &cks, &n);
    g_assert_cmpuint(n, ==, 1);
    g_assert_cmpstr(cks[0].name, ==, "second");
    sprite_checkpoints_free(cks, n);
    sprite_volume_close(v);

    /* A new volume from a checkpoint: its disk and VM state. */
    g_assert_cmpint(sprite_volume_create(&co, 0, url, "third", &err), ==,
                    -ENOENT);
    g_clear_error(&err);
    g_assert_cmpint(sprite_volume_create(&co, 0, url, "second", &err), ==,
                    0);
    g_assert_no_error(err);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    read_all_equal(clone, m2, size);
    sprite_volume_checkpoint_list(clone, &cks, &n);
    g_assert_cmpuint(n, ==, 1);
    g_assert_cmpstr(cks[0].name, ==, "second");
    g_assert_cmpuint(cks[0].vm_state_size, ==, vmlen / 2);
    sprite_checkpoints_free(cks, n);
    scribble(clone, r, m2, size, 10);
    g_assert_cmpint(sprite_volume_checkpoint_goto(clone, "second", &err), ==,
                    0);
    vmstate_equal(clone, vm2, vmlen / 2);
    sprite_volume_close(clone);

    /* The base cannot drop what the clone depends on. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, "2", NULL, &err), ==,
                    -EBUSY);
    g_assert_nonnull(strstr(err->message, "cannot be deleted"));
    g_clear_error(&err);
    sprite_volume_close(v);
    g_rand_free(r);
}

/* ------------------------------------------------------------------ */
/* Garbage collection */

typedef struct Listing {
    GHashTable *seqs;           /* seq -> size */
    uint64_t bytes;
} Listing;

static int listing_cb(const char *key, uint64_t size, void *opaque)
{
    Listing *l = opaque;
    uint64_t seq;

    g_assert_true(sprite_key_parse_seq(key, &seq));
    g_hash_table_insert(l->seqs, GSIZE_TO_POINTER(seq),
                        GSIZE_TO_POINTER(size));
    l->bytes += size;
    return 0;
}

/* The segments (@dir "seg") or snapshots ("meta") of @url on the store. */
static GHashTable *list_objects(const Backend *b, const char *url,
                                const char *dir, uint64_t *bytes)
{
    g_autoptr(GError) err = NULL;
    SpriteUrl *u;
    SpriteObjstore *os = open_store(b, url, &u);
    g_autofree char *prefix = g_strdup_printf("%s/%s/", u->volume, dir);
    Listing l = { .seqs = g_hash_table_new(NULL, NULL) };

    g_assert_cmpint(sprite_objstore_list(os, prefix, NULL, listing_cb, &l,
                                         &err), ==, 0);
    g_assert_no_error(err);
    sprite_objstore_close(os);
    sprite_url_free(u);
    if (bytes) {
        *bytes = l.bytes;
    }
    return l.seqs;
}

static bool on_store(GHashTable *seqs, uint64_t seq)
{
    return g_hash_table_contains(seqs, GSIZE_TO_POINTER(seq));
}

/* Write @len random bytes at @off of @v and @model. */
static void put(SpriteVolume *v, GRand *r, uint8_t *model, uint64_t off,
                uint64_t len)
{
    g_autoptr(GError) err = NULL;
    struct iovec iov = { model + off, len };

    fill_random(r, model + off, len);
    g_assert_cmpint(sprite_volume_writev(v, off, len, &iov, 1, &err), ==, 0);
    g_assert_no_error(err);
}

static void flush_ok(SpriteVolume *v)
{
    g_autoptr(GError) err = NULL;

    sprite_volume_flush(v, &err);
    g_assert_no_error(err);
}

static SpriteGcStats gc_ok(SpriteVolume *v, bool compaction)
{
    g_autoptr(GError) err = NULL;
    SpriteGcStats st;

    g_assert_cmpint(sprite_volume_gc(v, compaction, &st, &err), ==, 0);
    g_assert_no_error(err);
    return st;
}

/* What sprite_volume_get_info() says of @v, without its strings. */
static SpriteVolumeInfo info_numbers(SpriteVolume *v)
{
    SpriteVolumeInfo info, numbers;

    sprite_volume_get_info(v, &info);
    numbers = info;
    numbers.url = numbers.base_url = numbers.cache_dir = NULL;
    sprite_volume_info_clear(&info);
    return numbers;
}

/* The usage figure matches what the store holds. */
static void store_bytes_match(const Backend *b, SpriteVolume *v,
                              const char *url)
{
    g_autoptr(GHashTable) segs = NULL;
    uint64_t bytes;

    segs = list_objects(b, url, "seg", &bytes);
    g_assert_cmpuint(info_numbers(v).store_bytes, ==, bytes);
}

/*
 * Garbage collection (I9): dead segments go once a snapshot covers them,
 * live and checkpointed ones stay, a mostly dead segment is compacted
 * and then goes, a deleted checkpoint's data goes; the data reads the
 * same throughout and from an empty cache, and store-bytes stays right.
 */
static void test_gc(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 4 << 20, K = 1024, M = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *mck = NULL;
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(7);
    SpriteCheckpoint ck = { .name = (char *)"ck", .icount = -1 };
    SpriteCheckpoint ck2 = { .name = (char *)"ck2", .icount = -1 };
    uint64_t held, dropped, compacted;
    GHashTable *segs;
    SpriteGcStats st;
    SpriteVolume *v;

    o.gc_grace_ms = -1;
    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    put(v, r, model, 0, size);                  /* 1: 1 MiB stays live */
    flush_ok(v);
    put(v, r, model, 0, 3 * M);                 /* 2 */
    flush_ok(v);
    put(v, r, model, 0, 256 * K);               /* 3: dead after 4 */
    flush_ok(v);
    put(v, r, model, 0, 256 * K);               /* 4 */
    flush_ok(v);
    g_assert_cmpuint(info_numbers(v).generation, ==, 4);

    /* No snapshot covers them yet: a restore would replay them all. */
    st = gc_ok(v, false);
    g_assert_cmpuint(st.segments + st.snapshots, ==, 0);

    /* Closing uploads a snapshot, then collects what is dead. */
    sprite_volume_close(v);
    segs = list_objects(b, url, "seg", NULL);
    g_assert_false(on_store(segs, 3));
    g_assert_true(on_store(segs, 1) && on_store(segs, 2) &&
                  on_store(segs, 4));
    g_hash_table_unref(segs);

    /* Segment 1 is 3/4 dead: compacted into a new one, then collected. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    store_bytes_match(b, v, url);
    compacted = info_numbers(v).generation + 1;
    st = gc_ok(v, true);
    g_assert_cmpuint(st.compacted, ==, 1);
    g_assert_cmpuint(st.compacted_bytes, ==, 1 * M);
    g_assert_cmpuint(info_numbers(v).generation, ==, compacted);
    read_all_equal(v, model, size);
    st = gc_ok(v, true);
    /* 1, and the empty one that close wrote for its second snapshot */
    g_assert_cmpuint(st.segments, ==, 2);
    g_assert_cmpuint(st.compacted, ==, 0);
    segs = list_objects(b, url, "seg", NULL);
    g_assert_false(on_store(segs, 1));
    g_assert_true(on_store(segs, 2) && on_store(segs, compacted));
    g_hash_table_unref(segs);
    store_bytes_match(b, v, url);
    read_all_equal(v, model, size);

    /* Data only a checkpoint reads stays. */
    put(v, r, model, 512 * K, 256 * K);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &ck, &err), ==, 0);
    mck = g_memdup2(model, size);
    flush_ok(v);
    held = info_numbers(v).generation;
    put(v, r, model, 512 * K, 256 * K);
    flush_ok(v);
    sprite_volume_close(v);
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    segs = list_objects(b, url, "seg", NULL);
    g_assert_true(on_store(segs, held));
    g_hash_table_unref(segs);
    read_all_equal(v, model, size);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "ck", &err), ==, 0);
    read_all_equal(v, mck, size);
    memcpy(model, mck, size);

    /* A deleted checkpoint's data goes with it. */
    put(v, r, model, 2 * M, 64 * K);
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &ck2, &err), ==, 0);
    flush_ok(v);
    dropped = info_numbers(v).generation;
    put(v, r, model, 2 * M, 64 * K);
    flush_ok(v);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "ck2", &err),
                    ==, 0);
    sprite_volume_close(v);
    segs = list_objects(b, url, "seg", NULL);
    g_assert_false(on_store(segs, dropped));
    g_assert_true(on_store(segs, held));
    g_hash_table_unref(segs);
    /* Old snapshots go: the newest stays, with the one close replaced
     * after its deletes, until the next pass. */
    segs = list_objects(b, url, "meta", NULL);
    g_assert_cmpuint(g_hash_table_size(segs), ==, 2);
    g_hash_table_unref(segs);
    /* Restored from the snapshot close uploaded after its deletes. */
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    read_all_equal(v, model, size);
    store_bytes_match(b, v, url);
    sprite_volume_close(v);
    g_rand_free(r);
}

/* Read all of @v and expect it to fail because an object is gone. */
static void read_fails(SpriteVolume *v, uint64_t size)
{
    g_autofree uint8_t *buf = g_malloc(size);
    g_autoptr(GError) err = NULL;
    struct iovec iov = { buf, size };

    g_assert_cmpint(sprite_volume_readv(v, 0, size, &iov, 1, &err), <, 0);
    g_assert_nonnull(err);
}

/*
 * What the collector must not take: data a reader that opened earlier
 * still reads (within the grace period), data a clone is pinned to, and
 * the segments a host's stale database would roll forward through.
 */
static void test_gc_readers(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    g_autofree char *rurl = NULL, *rcache = NULL;
    g_autofree char *curl = NULL, *ccache = NULL;
    g_autofree char *hcache = g_strdup_printf("%s/cache-host-%u", tmpdir,
                                              counter++);
    SpriteVolumeOptions o = opts(b, &url, &cache);
    SpriteVolumeOptions ro = opts(b, &rurl, &rcache);
    SpriteVolumeOptions co = opts(b, &curl, &ccache);
    SpriteVolumeOptions ho = o;
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *old = NULL;
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(8);
    SpriteVolume *v, *reader, *clone;
    GHashTable *segs;
    SpriteGcStats st;
    uint64_t pin;
    int i;

    /* A reader opens; the writer replaces everything and collects. */
    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    put(v, r, model, 0, size);
    sprite_volume_close(v);
    old = g_memdup2(model, size);
    ro.url = url;
    ro.read_only = true;
    g_assert_cmpint(sprite_volume_open(&ro, &reader, &err), ==, 0);

    /* With the default grace period, what the reader needs stays. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    put(v, r, model, 0, size);
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    st = gc_ok(v, true);
    g_assert_cmpuint(st.segments, ==, 0);
    g_assert_cmpuint(st.waiting, >=, 1);
    read_all_equal(reader, old, size);
    sprite_volume_close(reader);

    /* Without one, a reader that opened before loses its data: an error,
     * never other bytes. */
    g_assert_cmpint(sprite_volume_open(&ro, &reader, &err), ==, 0);
    put(v, r, model, 0, size);
    flush_ok(v);
    sprite_volume_close(v);
    o.gc_grace_ms = -1;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    sprite_volume_close(v);     /* snapshot, then collection */
    read_fails(reader, size);
    sprite_volume_close(reader);

    /* A clone pins the segments it reads as of its creation. */
    g_assert_cmpint(sprite_volume_create(&co, 0, url, NULL, &err), ==, 0);
    g_free(old);
    old = g_memdup2(model, size);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    pin = info_numbers(v).generation;
    for (i = 0; i < 3; i++) {
        put(v, r, model, 0, size);
        flush_ok(v);
    }
    sprite_volume_close(v);
    segs = list_objects(b, url, "seg", NULL);
    g_assert_true(on_store(segs, pin));         /* dead, but pinned */
    g_assert_false(on_store(segs, pin + 1));
    g_hash_table_unref(segs);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    read_all_equal(clone, old, size);
    sprite_volume_close(clone);
    rm_rf(ccache);
    g_assert_cmpint(sprite_volume_open(&co, &clone, &err), ==, 0);
    read_all_equal(clone, old, size);
    sprite_volume_close(clone);

    /*
     * A host whose database is older than the newest snapshot, when the
     * segments after it were collected: it starts from the snapshot.
     */
    ho.cache_dir = hcache;
    g_assert_cmpint(sprite_volume_open(&ho, &v, &err), ==, 0);
    put(v, r, model, 0, 4096);                  /* stays live */
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    for (i = 0; i < 3; i++) {
        put(v, r, model, 8192, 4096);           /* all but one die */
        flush_ok(v);
    }
    sprite_volume_close(v);
    g_assert_cmpint(sprite_volume_open(&ho, &v, &err), ==, 0);
    g_assert_no_error(err);
    read_all_equal(v, model, size);
    sprite_volume_close(v);
    g_rand_free(r);
}

/* Blocks that say what they are: index, version, then a fill byte. */
#define RACE_BLOCK 4096
#define RACE_BLOCKS 256

static void race_block(uint8_t *p, uint64_t index, uint64_t version)
{
    memcpy(p, &index, 8);
    memcpy(p + 8, &version, 8);
    memset(p + 16, (int)(index * 31 + version), RACE_BLOCK - 16);
}

typedef struct Race {
    SpriteVolumeOptions ro;
    int64_t grace_us;           /* the writer's gc_grace_ms */
    int stop;
    int restores;
    int outlived;               /* restores that failed after the grace */
    int bad;
} Race;

/*
 * Restore on a "new host" (an empty cache) and read it all, again and
 * again: every read must succeed with blocks that are whole.  Only a
 * restore that lasted longer than the grace period may fail to read (the
 * documented limit of a read-only open), and never with other bytes.
 */
static gpointer race_reader(gpointer opaque)
{
    Race *c = opaque;
    g_autofree uint8_t *buf = g_malloc(RACE_BLOCK * RACE_BLOCKS);
    g_autofree uint8_t *want = g_malloc(RACE_BLOCK);
    struct iovec iov = { buf, RACE_BLOCK * RACE_BLOCKS };

    while (!g_atomic_int_get(&c->stop)) {
        g_autofree char *cache = g_strdup_printf("%s/cache-race-%d", tmpdir,
                                                 g_atomic_int_add(&counter,
                                                                  1));
        SpriteVolumeOptions ro = c->ro;
        g_autoptr(GError) err = NULL;
        SpriteVolume *v = NULL;
        uint64_t i, index, version;
        int64_t start = g_get_monotonic_time();

        ro.cache_dir = cache;
        if (sprite_volume_open(&ro, &v, &err) < 0 ||
            sprite_volume_readv(v, 0, iov.iov_len, &iov, 1, &err) < 0) {
            int64_t took = g_get_monotonic_time() - start;

            g_printerr("restore failed after %" G_GINT64_FORMAT " ms: %s\n",
                       took / 1000, err->message);
            g_atomic_int_inc(took > c->grace_us ? &c->outlived : &c->bad);
        } else {
            for (i = 0; i < RACE_BLOCKS; i++) {
                uint8_t *p = buf + i * RACE_BLOCK;

                memcpy(&index, p, 8);
                memcpy(&version, p + 8, 8);
                race_block(want, i, version);
                if (index != i || memcmp(p, want, RACE_BLOCK)) {
                    g_atomic_int_inc(&c->bad);
                    break;
                }
            }
            g_atomic_int_inc(&c->restores);
        }
        if (v) {
            sprite_volume_close(v);
        }
        rm_rf(cache);
    }
    return NULL;
}

/*
 * Garbage collection racing restores: a writer overwrites, closes
 * (snapshot and collection), reopens and compacts, with a short grace
 * period, while another thread restores from the store and reads it all
 * over and over.  No restore may fail or see a torn block.
 */
static void test_gc_race(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = RACE_BLOCK * RACE_BLOCKS;
    g_autofree char *url = NULL, *cache = NULL;
    g_autofree char *rurl = NULL, *rcache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *block = g_malloc(RACE_BLOCK);
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(9);
    Race c = { .ro = opts(b, &rurl, &rcache), .grace_us = 3000 * 1000 };
    SpriteVolume *v;
    GThread *t;
    uint64_t version = 0, i;
    int round, n;

    /* Long enough for a restore here, short enough to collect a lot. */
    o.gc_grace_ms = c.grace_us / 1000;
    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    for (i = 0; i < RACE_BLOCKS; i++) {
        struct iovec iov = { block, RACE_BLOCK };

        race_block(block, i, version);
        g_assert_cmpint(sprite_volume_writev(v, i * RACE_BLOCK, RACE_BLOCK,
                                             &iov, 1, &err), ==, 0);
    }
    sprite_volume_close(v);

    c.ro.url = url;
    c.ro.read_only = true;
    t = g_thread_new("race-reader", race_reader, &c);
    for (round = 0; round < 12; round++) {
        g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
        g_assert_no_error(err);
        gc_ok(v, true);
        for (n = 0; n < 4; n++) {
            version++;
            for (i = 0; i < RACE_BLOCKS / 2; i++) {
                uint64_t at = g_rand_int_range(r, 0, RACE_BLOCKS);
                struct iovec iov = { block, RACE_BLOCK };

                race_block(block, at, version);
                g_assert_cmpint(sprite_volume_writev(v, at * RACE_BLOCK,
                                                     RACE_BLOCK, &iov, 1,
                                                     &err), ==, 0);
            }
            flush_ok(v);
        }
        sprite_volume_close(v);
        g_usleep(500 * 1000);
    }
    g_atomic_int_set(&c.stop, 1);
    g_thread_join(t);
    g_assert_cmpint(c.bad, ==, 0);
    g_assert_cmpint(c.restores, >=, 3);
    g_test_message("%d restores raced the collector, %d outlived the grace",
                   c.restores, c.outlived);
    g_rand_free(r);
}

/*
 * Incremental VM state: a checkpoint stores only the VM state that
 * differs from the previous one's, even when the same bytes land at
 * other positions of the stream; every checkpoint still reads its own,
 * after reopening with an empty cache and after the one it shares with
 * was deleted and garbage collected.
 */
/*
 * Collect garbage (compacting too), then read checkpoint @name's VM state
 * from the store alone: it must be @vm.
 */
static void gc_then_vmstate_equal(const SpriteVolumeOptions *o,
                                  const char *cache, const char *name,
                                  const uint8_t *vm, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    SpriteVolume *v;

    g_assert_cmpint(sprite_volume_open(o, &v, &err), ==, 0);
    gc_ok(v, true);
    sprite_volume_close(v);
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, name, &err), ==, 0);
    vmstate_equal(v, vm, len);
    sprite_volume_close(v);
}

static void test_vmstate_dedup(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t len = 8 << 20, M = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *a = NULL;
    g_autofree uint8_t *bb = g_malloc(len + 100);
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(11);
    SpriteCheckpoint c1 = { .name = (char *)"c1", .icount = -1 };
    SpriteCheckpoint c2 = { .name = (char *)"c2", .icount = -1 };
    SpriteCheckpoint c3 = { .name = (char *)"c3", .icount = -1 };
    SpriteCheckpoint c4 = { .name = (char *)"c4", .icount = -1 };
    SpriteVolume *v;

    o.gc_grace_ms = -1;
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==,
                    0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    a = write_vmstate(v, r, len);
    c1.vm_state_size = len;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").added_bytes, >=, len);

    /* 100 bytes inserted at 1 MiB shift all that follows; 64 KiB at
     * 5 MiB change. */
    memcpy(bb, a, M);
    fill_random(r, bb + M, 100);
    memcpy(bb + M + 100, a + M, len - M);
    fill_random(r, bb + 5 * M, 64 << 10);
    stream_vmstate(v, bb, len + 100);
    c2.vm_state_size = len + 100;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c2, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c2").added_bytes, <, 1 * M);

    /* The same again: next to nothing. */
    stream_vmstate(v, bb, len + 100);
    c3.vm_state_size = len + 100;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c3, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c3").added_bytes, <, 64 << 10);

    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_equal(v, a, len);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c2", &err), ==, 0);
    vmstate_equal(v, bb, len + 100);
    sprite_volume_close(v);

    /* From the store alone; then without c1, whose bytes c2 reuses. */
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c3", &err), ==, 0);
    vmstate_equal(v, bb, len + 100);
    /* This process never saw c3's stream: the database knows its chunks. */
    stream_vmstate(v, bb, len + 100);
    c4.vm_state_size = len + 100;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c4, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c4").added_bytes, <, 64 << 10);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_equal(v, a, len);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "c1", &err),
                    ==, 0);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "c3", &err),
                    ==, 0);
    sprite_volume_close(v);
    gc_then_vmstate_equal(&o, cache, "c2", bb, len + 100);
    g_rand_free(r);
}

typedef struct Writers {
    SpriteVolume *v;
    unsigned id;                    /* this thread's: blocks id, id + 4... */
    uint64_t *versions;             /* the last version written per block */
    gint *finished;                 /* writers done (atomic) */
    gint bad;                       /* the checker's (atomic) */
} Writers;

#define WRITERS 4
#define WRITER_BLOCKS 64
#define WRITER_VERSIONS 200             /* 12.5 MiB per thread */

/* Write this thread's blocks over and over, each tagged with a version. */
static gpointer writer_main(gpointer opaque)
{
    Writers *w = opaque;
    uint8_t buf[RACE_BLOCK];
    uint64_t version = 0;

    while (version < WRITER_VERSIONS) {
        unsigned i;

        version++;
        for (i = w->id; i < WRITER_BLOCKS; i += WRITERS) {
            struct iovec iov = { buf, sizeof(buf) };

            race_block(buf, i, version);
            g_assert_cmpint(sprite_volume_writev(w->v, (uint64_t)i *
                                                 RACE_BLOCK, RACE_BLOCK,
                                                 &iov, 1, NULL), ==, 0);
            w->versions[i] = version;
        }
    }
    g_atomic_int_inc(w->finished);
    return NULL;
}

/* Read blocks while they are written: each must be whole, some version. */
static gpointer checker_main(gpointer opaque)
{
    Writers *w = opaque;
    g_autofree uint8_t *want = g_malloc(RACE_BLOCK);
    uint8_t buf[RACE_BLOCK];
    struct iovec iov = { buf, sizeof(buf) };
    unsigned i = 0;

    while (g_atomic_int_get(w->finished) < WRITERS) {
        uint64_t version;

        i = (i + 37) % WRITER_BLOCKS;
        if (sprite_volume_readv(w->v, (uint64_t)i * RACE_BLOCK, RACE_BLOCK,
                                &iov, 1, NULL) < 0) {
            g_atomic_int_inc(&w->bad);
            continue;
        }
        memcpy(&version, buf + 8, 8);
        race_block(want, i, version);
        if (version && memcmp(buf, want, RACE_BLOCK)) {
            g_atomic_int_inc(&w->bad);
        }
    }
    return NULL;
}

/*
 * Guest writes copy their bytes into the log without the volume lock:
 * writers on several threads while flushes seal the log under them; at
 * the end every block holds its last version, warm and from the store.
 */
/* Write @n bytes of @vm at @pos of the VM state area, in one call. */
static void put_vmstate(SpriteVolume *v, const uint8_t *vm, uint64_t pos,
                        uint64_t n)
{
    g_autoptr(GError) err = NULL;
    struct iovec iov = { (uint8_t *)vm + pos, n };

    g_assert_cmpint(sprite_volume_vmstate_writev(v, pos, n, &iov, 1, &err),
                    ==, 0);
}

/*
 * VM state written as QEMU's mapped-ram savevm does: a stream from 0
 * that jumps past the RAM, pages at fixed offsets (here 4 MiB in one
 * write), a bitmap written back near the start.  Writes away from the
 * stream are stored in place, and the area still reads as the
 * checkpoint's after it, so that a second savevm writing a few pages
 * stores only those.
 */
static void test_vmstate_in_place(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t P = 1 << 20, RAM = 4 << 20, len = P + RAM + 8192;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *m1 = g_malloc0(len);
    g_autofree uint8_t *m2 = NULL;
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(12);
    SpriteCheckpoint c1 = { .name = (char *)"c1", .icount = -1 };
    SpriteCheckpoint c2 = { .name = (char *)"c2", .icount = -1 };
    SpriteVolume *v;
    uint64_t before;
    int i;

    o.gc_grace_ms = -1;
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==,
                    0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    fill_random(r, m1, 3000);                       /* header stream */
    fill_random(r, m1 + P, RAM);                    /* pages */
    fill_random(r, m1 + P + RAM, 8192);             /* device state */
    fill_random(r, m1 + 4096, 512);                 /* bitmap */
    put_vmstate(v, m1, 0, 1000);
    put_vmstate(v, m1, 1000, 2000);
    put_vmstate(v, m1, P, RAM);
    put_vmstate(v, m1, P + RAM, 8192);
    put_vmstate(v, m1, 4096, 512);
    c1.vm_state_size = 3000 + RAM + 8192 + 512;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c1, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c1").added_bytes, >=, RAM);
    vmstate_equal(v, m1, len);

    /* The next savevm: a new stream, three pages, the bitmap. */
    m2 = g_memdup2(m1, len);
    fill_random(r, m2, 3000);
    for (i = 0; i < 3; i++) {
        fill_random(r, m2 + P + (uint64_t)i * 1234567 / 4096 * 4096, 4096);
    }
    fill_random(r, m2 + 4096, 512);
    put_vmstate(v, m2, 0, 3000);
    for (i = 0; i < 3; i++) {
        put_vmstate(v, m2, P + (uint64_t)i * 1234567 / 4096 * 4096, 4096);
    }
    put_vmstate(v, m2, 4096, 512);
    c2.vm_state_size = 3000 + 3 * 4096 + 512;
    g_assert_cmpint(sprite_volume_checkpoint_create(v, &c2, &err), ==, 0);
    g_assert_cmpuint(listed(v, "c2").added_bytes, <, 64 << 10);
    vmstate_equal(v, m2, len);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c1", &err), ==, 0);
    vmstate_equal(v, m1, len);
    sprite_volume_close(v);

    /* From the store alone; c2 still reads right once c1 is collected. */
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    before = du(cache);
    g_assert_cmpint(sprite_volume_checkpoint_goto(v, "c2", &err), ==, 0);
    /* On the file store, the goto copies the VM state before any read. */
    if (g_str_equal(b->name, "file")) {
        for (i = 0; i < 3000 && du(cache) < before + RAM; i++) {
            g_usleep(10 * 1000);
        }
        g_assert_cmpuint(du(cache), >=, before + RAM);
    }
    vmstate_equal(v, m2, len);
    g_assert_cmpint(sprite_volume_checkpoint_delete(v, NULL, "c1", &err),
                    ==, 0);
    sprite_volume_close(v);
    gc_then_vmstate_equal(&o, cache, "c2", m2, len);
    g_rand_free(r);
}

static void test_concurrent_writers(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = (uint64_t)WRITER_BLOCKS * RACE_BLOCK;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *buf = g_malloc(size);
    g_autofree uint8_t *want = g_malloc(RACE_BLOCK);
    g_autoptr(GError) err = NULL;
    uint64_t versions[WRITER_BLOCKS] = { 0 };
    gint finished = 0;
    Writers w[WRITERS], check;
    GThread *t[WRITERS], *checker;
    struct iovec iov = { buf, size };
    SpriteVolume *v;
    int i, pass;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    for (i = 0; i < WRITERS; i++) {
        w[i] = (Writers){ .v = v, .id = i, .versions = versions,
                          .finished = &finished };
        t[i] = g_thread_new("writer", writer_main, &w[i]);
    }
    check = (Writers){ .v = v, .finished = &finished };
    checker = g_thread_new("checker", checker_main, &check);
    while (g_atomic_int_get(&finished) < WRITERS) {
        flush_ok(v);
    }
    for (i = 0; i < WRITERS; i++) {
        g_thread_join(t[i]);
    }
    g_thread_join(checker);
    g_assert_cmpint(check.bad, ==, 0);
    flush_ok(v);
    for (pass = 0; pass < 2; pass++) {
        g_assert_cmpint(sprite_volume_readv(v, 0, size, &iov, 1, &err), ==,
                        0);
        for (i = 0; i < WRITER_BLOCKS; i++) {
            g_assert_cmpuint(versions[i], ==, WRITER_VERSIONS);
            race_block(want, i, versions[i]);
            g_assert_true(memcmp(buf + (uint64_t)i * RACE_BLOCK, want,
                                 RACE_BLOCK) == 0);
        }
        sprite_volume_close(v);
        rm_rf(cache);
        g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    }
    sprite_volume_close(v);
}

/* Read all of @v without waiting: 0 and @model's bytes, or -EAGAIN. */
static int try_read_all(SpriteVolume *v, const uint8_t *model, uint64_t size)
{
    g_autofree uint8_t *buf = g_malloc(size);
    struct iovec iov = { buf, size };
    int ret = sprite_volume_try_readv(v, 0, size, &iov, 1);

    if (ret == 0) {
        g_assert_true(memcmp(buf, model, size) == 0);
    }
    return ret;
}

/*
 * Reads that must not block on the network (QEMU's event loop) succeed
 * from data written here and from checked cache chunks, and say -EAGAIN
 * when data would have to be fetched.
 */
static void test_try_read(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 1 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autoptr(GError) err = NULL;
    GRand *r = g_rand_new_with_seed(12);
    SpriteVolume *v;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    put(v, r, model, 0, size / 2);
    g_assert_cmpint(try_read_all(v, model, size), ==, 0);     /* pending */
    flush_ok(v);
    g_assert_cmpint(try_read_all(v, model, size), ==, 0);     /* cached */
    sprite_volume_close(v);

    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(try_read_all(v, model, size), ==, -EAGAIN);
    read_all_equal(v, model, size);
    g_assert_cmpint(try_read_all(v, model, size), ==, 0);
    sprite_volume_close(v);
    g_rand_free(r);
}

/* @model is what a read-only open of @o with an empty cache reads. */
static void read_elsewhere_equal(SpriteVolumeOptions o, const uint8_t *model,
                                 uint64_t size)
{
    g_autofree char *cache = g_strdup_printf("%s/elsewhere-%u", tmpdir,
                                             counter++);
    g_autoptr(GError) err = NULL;
    SpriteVolume *v;

    o.cache_dir = cache;
    o.read_only = true;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    read_all_equal(v, model, size);
    sprite_volume_close(v);
    rm_rf(cache);
}

/*
 * The two log files are used in turn and kept between seals, with the
 * bytes of an earlier, larger seal past the data (or emptied when
 * large): every segment made from them holds exactly its own data, a
 * record alone included, and so does the cache's copy.
 */
static void test_log_reuse(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 32 << 20;
    const uint64_t lens[] = { 7 << 20, 4096, 0, 9 << 20, 20 << 20, 8192 };
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autoptr(GError) err = NULL;
    SpriteCheckpoint ck = { .name = (char *)"ck", .icount = -1 };
    GRand *r = g_rand_new_with_seed(14);
    SpriteVolume *v;
    guint i;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    for (i = 0; i < G_N_ELEMENTS(lens); i++) {
        if (lens[i]) {
            put(v, r, model, (i * (3 << 20)) % (size - lens[i]), lens[i]);
        } else {
            g_assert_cmpint(sprite_volume_checkpoint_create(v, &ck, &err),
                            ==, 0);
        }
        g_assert_cmpint(sprite_volume_flush_all(v, &err), ==, 0);
        store_bytes_match(b, v, url);
        read_all_equal(v, model, size);
        read_elsewhere_equal(o, model, size);
    }
    sprite_volume_close(v);
    g_rand_free(r);
}

/* Flushes @v over and over, keeping its lock busy, until told to stop. */
typedef struct Flusher {
    SpriteVolume *v;
    gint stop;
    gint done;
} Flusher;

static gpointer flusher_main(gpointer opaque)
{
    Flusher *f = opaque;

    do {
        flush_ok(f->v);
    } while (!g_atomic_int_get(&f->stop));
    g_atomic_int_set(&f->done, 1);
    return NULL;
}

/* Reads @v over and over, the same way. */
static gpointer busy_reader_main(gpointer opaque)
{
    Flusher *f = opaque;
    uint8_t buf[4096];
    struct iovec iov = { buf, sizeof(buf) };

    while (!g_atomic_int_get(&f->stop)) {
        g_assert_cmpint(sprite_volume_readv(f->v, 0, sizeof(buf), &iov, 1,
                                            NULL), ==, 0);
    }
    return NULL;
}

/* Holds @v's lock nearly all the time, as a slow upload's mapping would. */
static gpointer lock_hog_main(gpointer opaque)
{
    Flusher *f = opaque;

    while (!g_atomic_int_get(&f->stop)) {
        g_mutex_lock(&f->v->lock);
        g_usleep(1000);
        g_mutex_unlock(&f->v->lock);
        g_usleep(20);
    }
    return NULL;
}

/* End a try write left -EINPROGRESS, pausing as the driver does. */
static int try_write_end(SpriteVolume *v, const SpriteWrite *w)
{
    int ret;

    while ((ret = sprite_volume_try_write_end(v, w)) == -EINPROGRESS) {
        g_usleep(10);
    }
    return ret;
}

/*
 * Writes from an event loop (sprite_volume_try_writev()) while another
 * thread flushes: each is done at once, ended later when its mapping
 * found the lock busy, or left to sprite_volume_writev(); all read back
 * and survive an empty cache.  A write left -EINPROGRESS holds up a
 * flush until it ends, and lands in the segment that flush uploads.  A
 * write that cannot be done here (beyond the end, read-only, the log
 * file failing) writes nothing.
 */
static void test_try_write(gconstpointer data)
{
    const Backend *b = data;
    const uint64_t size = 16 << 20, block = 4096, big = 2 << 20;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autoptr(GError) err = NULL;
    unsigned done = 0, ended = 0, waited = 0, tries = 0;
    uint8_t junk[8192];
    int full, logfd;
    Flusher f = { 0 };
    GRand *r = g_rand_new_with_seed(13);
    struct iovec iov;
    SpriteWrite w;
    GThread *t, *reader;
    uint64_t before;
    int i, ret;

    g_assert_cmpint(sprite_volume_create(&o, size, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &f.v, &err), ==, 0);
    t = g_thread_new("flusher", flusher_main, &f);
    reader = g_thread_new("reader", busy_reader_main, &f);
    for (i = 0; i < 400; i++) {
        uint64_t off = g_rand_int_range(r, 0, 1024) * block;
        uint64_t len = g_rand_int_range(r, 1, 65) * block;

        fill_random(r, model + off, len);
        iov = (struct iovec) { model + off, len };
        ret = sprite_volume_try_writev(f.v, off, len, &iov, 1, &w);
        if (ret == -EINPROGRESS) {
            ret = try_write_end(f.v, &w);
            g_assert_cmpint(ret, ==, 0);
            ended++;
        } else if (ret == 0) {
            done++;
        } else {
            g_assert_cmpint(ret, ==, -EAGAIN);
            g_assert_cmpint(sprite_volume_writev(f.v, off, len, &iov, 1,
                                                 &err), ==, 0);
            waited++;
        }
    }
    g_atomic_int_set(&f.stop, 1);
    g_thread_join(t);
    g_thread_join(reader);
    g_test_message("try writes: %u done, %u ended later, %u waited",
                   done, ended, waited);
    g_assert_cmpuint(done, >, 0);
    read_all_equal(f.v, model, size);

    /*
     * Force -EINPROGRESS: a large write while the lock is nearly always
     * held finds it free to take room (the loop catches a gap) and, most
     * times, busy once its bytes are in.  A write that got through is
     * flushed, so that the log stays short of PENDING_MAX (where the
     * shipper would seal, and wait for the write this test holds).
     */
    f.stop = 0;
    t = g_thread_new("lock-hog", lock_hog_main, &f);
    memset(model + size - big, 0x5c, big);
    iov = (struct iovec) { model + size - big, big };
    do {
        ret = sprite_volume_try_writev(f.v, size - big, big, &iov, 1, &w);
        g_assert_true(ret == -EAGAIN || ret == 0 || ret == -EINPROGRESS);
        if (ret == 0) {
            flush_ok(f.v);
            memset(model + size - big, ++tries, big);
            g_assert_cmpuint(tries, <, 200);
        }
    } while (ret != -EINPROGRESS);
    g_atomic_int_set(&f.stop, 1);
    g_thread_join(t);
    /* With another write pending, a flush seals: it waits for this one. */
    put(f.v, r, model, 0, block);
    f.stop = 1;
    f.done = 0;
    t = g_thread_new("flusher", flusher_main, &f);
    g_usleep(200 * 1000);
    g_assert_cmpint(g_atomic_int_get(&f.done), ==, 0);
    g_assert_cmpint(try_write_end(f.v, &w), ==, 0);
    g_thread_join(t);
    g_assert_cmpuint(info_numbers(f.v).pending_bytes, ==, 0);
    read_all_equal(f.v, model, size);

    /* Refused, writing nothing: beyond the end; the log file failing. */
    before = info_numbers(f.v).pending_bytes;
    memset(junk, 0xee, sizeof(junk));
    iov = (struct iovec) { junk, sizeof(junk) };
    g_assert_cmpint(sprite_volume_try_writev(f.v, size, block, &iov, 1, &w),
                    ==, -EAGAIN);
    g_assert_cmpint(sprite_volume_try_writev(f.v, size - block, 2 * block,
                                             &iov, 1, &w), ==, -EAGAIN);
    /* The log file failing (/dev/full put in its place for one write). */
    full = open("/dev/full", O_RDWR | O_CLOEXEC);
    g_assert_cmpint(full, >=, 0);
    g_mutex_lock(&f.v->lock);
    logfd = dup(f.v->pend_fd);
    g_assert_cmpint(dup2(full, f.v->pend_fd), ==, f.v->pend_fd);
    g_mutex_unlock(&f.v->lock);
    while ((ret = sprite_volume_try_writev(f.v, 0, block, &iov, 1, &w)) ==
           -EAGAIN) {
        g_usleep(100);      /* the shipper holds the lock */
    }
    if (ret == -EINPROGRESS) {
        ret = try_write_end(f.v, &w);
    }
    g_mutex_lock(&f.v->lock);
    g_assert_cmpint(dup2(logfd, f.v->pend_fd), ==, f.v->pend_fd);
    g_mutex_unlock(&f.v->lock);
    close(logfd);
    close(full);
    g_assert_cmpint(ret, ==, -ENOSPC);
    g_assert_cmpuint(info_numbers(f.v).pending_bytes, ==, before);
    read_all_equal(f.v, model, size);
    flush_ok(f.v);
    sprite_volume_close(f.v);

    rm_rf(cache);
    o.read_only = true;
    g_assert_cmpint(sprite_volume_open(&o, &f.v, &err), ==, 0);
    read_all_equal(f.v, model, size);
    g_assert_cmpint(sprite_volume_try_writev(f.v, 0, block, &iov, 1, &w),
                    ==, -EAGAIN);
    read_all_equal(f.v, model, size);
    sprite_volume_close(f.v);
    g_rand_free(r);
}

static void test_errors(gconstpointer data)
{
    const Backend *b = data;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autoptr(GError) err = NULL;
    SpriteVolume *v = NULL, *w = NULL;
    uint8_t buf[512] = { 1 };
    struct iovec iov = { buf, sizeof(buf) };

    /* Missing volume. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, -ENOENT);
    g_assert_nonnull(strstr(err->message, "does not exist"));
    g_clear_error(&err);
    /* Bad sizes. */
    g_assert_cmpint(sprite_volume_create(&o, 1000, NULL, NULL, &err), ==,
                    -EINVAL);
    g_clear_error(&err);
    g_assert_cmpint(sprite_volume_create(&o, 0, NULL, NULL, &err), ==, -EINVAL);
    g_clear_error(&err);
    /* Exists. */
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==,
                    -EEXIST);
    g_assert_nonnull(strstr(err->message, "already exists"));
    g_clear_error(&err);
    /* Beyond the end. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_writev(v, (1 << 20) - 100, sizeof(buf),
                                         &iov, 1, &err), ==, -EINVAL);
    g_clear_error(&err);
    /* A second writer with the same cache directory. */
    g_assert_cmpint(sprite_volume_open(&o, &w, &err), ==, -EBUSY);
    g_clear_error(&err);
    /* ... and one with its own cache (another host): the lease says no. */
    {
        g_autofree char *cache2 = g_strdup_printf("%s-2", cache);
        SpriteVolumeOptions o2 = o;
        SpriteVolumeInfo info;

        sprite_volume_get_info(v, &info);
        g_assert_true(info.writable);
        g_assert_cmpuint(info.epoch, ==, 1);
        g_assert_cmpint(info.fencing, ==, b->fences);
        sprite_volume_info_clear(&info);

        o2.cache_dir = cache2;
        g_assert_cmpint(sprite_volume_open(&o2, &w, &err), ==, -EBUSY);
        g_assert_nonnull(strstr(err->message, "takeover=on"));
        g_clear_error(&err);
        if (b->fences) {
            /* Taking over fences the old writer off at its next flush. */
            o2.takeover = true;
            g_assert_cmpint(sprite_volume_writev(v, 0, sizeof(buf), &iov, 1,
                                                 &err), ==, 0);
            g_assert_cmpint(sprite_volume_open(&o2, &w, &err), ==, 0);
            sprite_volume_get_info(w, &info);
            g_assert_cmpuint(info.epoch, ==, 2);
            sprite_volume_info_clear(&info);
            g_assert_cmpint(sprite_volume_flush(v, &err), ==, -EIO);
            g_assert_nonnull(strstr(err->message, "another writer"));
            g_clear_error(&err);
            g_assert_cmpint(sprite_volume_writev(v, 512, sizeof(buf), &iov, 1,
                                                 &err), ==, -EIO);
            g_clear_error(&err);
            g_assert_cmpint(sprite_volume_writev(w, 512, sizeof(buf), &iov, 1,
                                                 &err), ==, 0);
            g_assert_cmpint(sprite_volume_flush(w, &err), ==, 0);
            sprite_volume_close(w);
        }
    }
    sprite_volume_close(v);
    /* Malformed URLs. */
    o.url = "sprite+ftp://x/y/z";
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), <, 0);
    g_clear_error(&err);
    o.url = "sprite+file://relative/dir";
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), <, 0);
    g_clear_error(&err);
}

/* A corrupt segment is an I/O error, never data. */
static void test_corrupt(gconstpointer data)
{
    const Backend *b = data;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autoptr(GError) err = NULL;
    g_autoptr(SpriteUrl) u = NULL;
    g_autoptr(GBytes) obj = NULL;
    g_autofree char *key = NULL;
    g_autofree uint8_t *copy = NULL;
    g_autofree uint8_t *buf = g_malloc(200000);
    struct iovec iov = { buf, 200000 };
    GHashTable *seqs;
    GHashTableIter it;
    gpointer seq;
    SpriteObjstore *os;
    SpriteVolume *v;
    size_t len;

    memset(buf, 0x5a, 200000);
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_writev(v, 0, 200000, &iov, 1, &err), ==, 0);
    sprite_volume_close(v);

    os = open_store(b, url, &u);
    key = sprite_key_segment(u->volume, 1);
    g_assert_cmpint(sprite_objstore_get_all(os, key, &obj, NULL, &err), ==, 0);
    copy = g_memdup2(g_bytes_get_data(obj, &len), g_bytes_get_size(obj));
    copy[len - 10] ^= 0xff;     /* a data byte of the last chunk */
    g_assert_cmpint(sprite_objstore_put(os, key, copy, len,
                                        SPRITE_PUT_DEFAULT, NULL, NULL,
                                        &err), ==, 0);
    rm_rf(cache);
    o.read_only = true;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_no_error(err);
    /* The first chunk is intact, the last is not. */
    g_assert_cmpint(sprite_volume_readv(v, 0, 4096, &iov, 1, &err), ==, 0);
    g_assert_cmpint(sprite_volume_readv(v, 199000, 1000, &iov, 1, &err), ==,
                    -EIO);
    g_assert_nonnull(strstr(err->message, "checksum"));
    g_clear_error(&err);
    sprite_volume_close(v);

    /* A truncated segment too. */
    g_assert_cmpint(sprite_objstore_put(os, key, copy, len - 5000,
                                        SPRITE_PUT_DEFAULT, NULL, NULL,
                                        &err), ==, 0);
    rm_rf(cache);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_cmpint(sprite_volume_readv(v, 150000, 50000, &iov, 1, &err), ==,
                    -EIO);
    g_clear_error(&err);
    sprite_volume_close(v);

    /*
     * Without a metadata snapshot, the open rolls that segment forward
     * and finds it shorter than its header says: the open fails, the
     * read-only one after looking again, as does the writer's.
     */
    seqs = list_objects(b, url, "meta", NULL);
    g_hash_table_iter_init(&it, seqs);
    while (g_hash_table_iter_next(&it, &seq, NULL)) {
        g_autofree char *snap = sprite_key_snapshot(u->volume,
                                                    GPOINTER_TO_SIZE(seq));

        g_assert_cmpint(sprite_objstore_delete(os, snap, &err), ==, 0);
    }
    g_hash_table_unref(seqs);
    for (int i = 0; i < 2; i++) {
        rm_rf(cache);
        o.read_only = i == 0;
        g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, -EIO);
        g_assert_nonnull(strstr(err->message, "still being written"));
        g_clear_error(&err);
    }
    sprite_objstore_close(os);
}

/* A volume written by a newer Sprite is refused, not misread. */
static void test_newer_format(gconstpointer data)
{
    const Backend *b = data;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autoptr(GError) err = NULL;
    g_autoptr(SpriteUrl) u = NULL;
    g_autoptr(GBytes) obj = NULL;
    g_autofree char *key = NULL;
    g_autofree uint8_t *copy = NULL;
    SpriteObjstore *os;
    SpriteVolume *v;
    size_t len;

    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==, 0);
    os = open_store(b, url, &u);
    key = sprite_key_descriptor(u->volume);
    g_assert_cmpint(sprite_objstore_get_all(os, key, &obj, NULL, &err), ==, 0);
    copy = g_memdup2(g_bytes_get_data(obj, &len), g_bytes_get_size(obj));
    copy[8] = SPRITE_FORMAT_VERSION + 1;
    g_assert_cmpint(sprite_objstore_put(os, key, copy, len,
                                        SPRITE_PUT_DEFAULT, NULL, NULL,
                                        &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, -EPROTONOSUPPORT);
    g_assert_nonnull(strstr(err->message, "newer"));
    sprite_objstore_close(os);
}

/*
 * Reads while flushes upload: each 4 KiB block is written once, with its
 * own pattern, by a writer that flushes often; readers meanwhile must see
 * every block either still zero or exactly its pattern, whichever of
 * pending log, segment being uploaded or durable map holds it.
 */
typedef struct Concurrent {
    SpriteVolume *v;
    unsigned blocks;
    gint written;                   /* blocks written so far (atomic) */
    gint stop;                      /* atomic */
    gint bad;                       /* atomic */
} Concurrent;

static gpointer concurrent_reader(gpointer opaque)
{
    Concurrent *c = opaque;
    GRand *r = g_rand_new_with_seed(GPOINTER_TO_UINT(g_thread_self()));
    uint8_t buf[4096];
    struct iovec iov = { buf, sizeof(buf) };

    while (!g_atomic_int_get(&c->stop)) {
        unsigned b = g_rand_int_range(r, 0, c->blocks);
        /* Read before the block: it was written before the read began. */
        unsigned written = g_atomic_int_get(&c->written);
        unsigned i;

        g_assert_cmpint(sprite_volume_readv(c->v, (uint64_t)b * 4096, 4096,
                                            &iov, 1, NULL), ==, 0);
        for (i = 0; i < sizeof(buf); i++) {
            if (buf[i] != buf[0] ||
                (buf[0] != 0 && buf[0] != (uint8_t)(b % 255 + 1))) {
                g_atomic_int_inc(&c->bad);
                break;
            }
        }
        if (buf[0] == 0 && b < written) {
            g_atomic_int_inc(&c->bad);
        }
    }
    g_rand_free(r);
    return NULL;
}

static void test_concurrent(gconstpointer data)
{
    const Backend *b = data;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autoptr(GError) err = NULL;
    Concurrent c = { .blocks = 256 };
    GThread *readers[2], *cold[4];
    uint8_t buf[4096];
    struct iovec iov = { buf, sizeof(buf) };
    unsigned i;

    g_assert_cmpint(sprite_volume_create(&o, c.blocks * 4096, NULL, NULL,
                                         &err), ==, 0);
    g_assert_cmpint(sprite_volume_open(&o, &c.v, &err), ==, 0);
    for (i = 0; i < G_N_ELEMENTS(readers); i++) {
        readers[i] = g_thread_new("reader", concurrent_reader, &c);
    }
    for (i = 0; i < c.blocks; i++) {
        memset(buf, i % 255 + 1, sizeof(buf));
        g_assert_cmpint(sprite_volume_writev(c.v, (uint64_t)i * 4096, 4096,
                                             &iov, 1, &err), ==, 0);
        g_atomic_int_set(&c.written, i + 1);
        if (i % 8 == 7) {
            g_assert_cmpint(sprite_volume_flush(c.v, &err), ==, 0);
        }
    }
    g_atomic_int_set(&c.stop, 1);
    for (i = 0; i < G_N_ELEMENTS(readers); i++) {
        g_thread_join(readers[i]);
    }
    g_assert_cmpint(c.bad, ==, 0);
    sprite_volume_close(c.v);

    /*
     * Cold reads from four threads at once with a cache smaller than the
     * volume: misses fetch in parallel, wait for each other's fetches of
     * the same chunks, and evict each other's segments.
     */
    rm_rf(cache);
    o.cache_size = 128 * 1024;
    g_assert_cmpint(sprite_volume_open(&o, &c.v, &err), ==, 0);
    g_atomic_int_set(&c.stop, 0);
    for (i = 0; i < G_N_ELEMENTS(cold); i++) {
        cold[i] = g_thread_new("cold-reader", concurrent_reader, &c);
    }
    g_usleep(G_USEC_PER_SEC);
    g_atomic_int_set(&c.stop, 1);
    for (i = 0; i < G_N_ELEMENTS(cold); i++) {
        g_thread_join(cold[i]);
    }
    g_assert_cmpint(c.bad, ==, 0);
    sprite_volume_close(c.v);
}

/* A writer that died without closing holds the lease until it expires. */
static void test_lease_expiry(gconstpointer data)
{
    const Backend *b = data;
    g_autofree char *url = NULL, *cache = NULL;
    SpriteVolumeOptions o = opts(b, &url, &cache);
    g_autofree char *cache2 = g_strdup_printf("%s-2", cache);
    g_autoptr(GError) err = NULL;
    SpriteVolumeInfo info;
    SpriteVolume *v;
    int status;
    pid_t pid;

    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==, 0);
    o.lease_ms = 1000;
    pid = fork();
    if (pid == 0) {
        /* Open, then die without releasing anything. */
        _exit(sprite_volume_open(&o, &v, NULL) == 0 ? 0 : 1);
    }
    g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    o.cache_dir = cache2;
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, -EBUSY);
    g_clear_error(&err);
    g_usleep(1200 * 1000);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    g_assert_no_error(err);
    sprite_volume_get_info(v, &info);
    g_assert_cmpuint(info.epoch, ==, 2);
    /* We claimed segment 1, fencing the dead writer off for good. */
    g_assert_cmpuint(info.generation, ==, 1);
    sprite_volume_info_clear(&info);
    sprite_volume_close(v);

    /* A clean close releases it: the next writer needs no fence. */
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, 0);
    sprite_volume_get_info(v, &info);
    g_assert_cmpuint(info.epoch, ==, 3);
    g_assert_cmpuint(info.generation, ==, 1);
    sprite_volume_info_clear(&info);
    sprite_volume_close(v);
}

static void test_bad_credentials(void)
{
    g_autofree char *url = NULL, *cache = NULL;
    Backend b = backends[1];
    SpriteVolumeOptions o;
    g_autoptr(GError) err = NULL;
    SpriteVolume *v;

    b.secret = "wrong-secret";
    o = opts(&b, &url, &cache);
    g_assert_cmpint(sprite_volume_create(&o, 1 << 20, NULL, NULL, &err), ==,
                    -EACCES);
    g_assert_null(strstr(err->message, "wrong-secret"));
    g_clear_error(&err);
    g_assert_cmpint(sprite_volume_open(&o, &v, &err), ==, -EACCES);
}

int main(int argc, char **argv)
{
    const char *tests[] = { "differential", "flush-durable", "clone",
                            "errors", "corrupt", "newer-format",
                            "lease-expiry", "concurrent", "checkpoints",
                            "gc", "gc-readers", "gc-race",
                            "vmstate-dedup", "vmstate-in-place",
                            "concurrent-writers", "try-read",
                            "try-write", "log-reuse", "restore-set" };
    GTestDataFunc fns[] = { test_differential, test_flush_durable,
                            test_clone, test_errors, test_corrupt,
                            test_newer_format, test_lease_expiry,
                            test_concurrent, test_checkpoints, test_gc,
                            test_gc_readers, test_gc_race,
                            test_vmstate_dedup, test_vmstate_in_place,
                            test_concurrent_writers, test_try_read,
                            test_try_write, test_log_reuse,
                            test_restore_set };
    int i, j, ret;

    g_test_init(&argc, &argv, NULL);
    setup_backends();
    for (i = 0; i < 3; i++) {
        for (j = 0; j < (int)G_N_ELEMENTS(tests); j++) {
            g_autofree char *path = g_strdup_printf("/volume/%s/%s",
                                                    backends[i].name,
                                                    tests[j]);
            g_test_add_data_func(path, &backends[i], fns[j]);
        }
    }
    g_test_add_func("/volume/rgw/bad-credentials", test_bad_credentials);
    ret = g_test_run();
    rm_rf(tmpdir);
    return ret;
}
