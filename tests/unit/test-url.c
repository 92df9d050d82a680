/*
 * Unit tests for Sprite volume URLs (block-sprite/objstore/url.c)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <string.h>

#include "sprite/objstore.h"

typedef struct GoodUrl {
    const char *url;
    SpriteObjstoreScheme scheme;
    const char *host;
    const char *bucket;
    const char *root;
    const char *volume;
    const char *canonical;      /* NULL: same as url */
} GoodUrl;

static const GoodUrl good_urls[] = {
    { "sprite://s3.example.com/bucket/vm1", SPRITE_SCHEME_HTTPS,
      "s3.example.com", "bucket", NULL, "vm1", NULL },
    { "sprite://s3.example.com:8443/my.bucket-1/vm_1.disk-A",
      SPRITE_SCHEME_HTTPS, "s3.example.com:8443", "my.bucket-1", NULL,
      "vm_1.disk-A", NULL },
    { "sprite+http://127.0.0.1:7480/sprite-test/vol", SPRITE_SCHEME_HTTP,
      "127.0.0.1:7480", "sprite-test", NULL, "vol", NULL },
    { "sprite+http://[::1]:7480/abc/v", SPRITE_SCHEME_HTTP, "[::1]:7480",
      "abc", NULL, "v", NULL },
    { "sprite+http://[::1]/abc/v", SPRITE_SCHEME_HTTP, "[::1]", "abc", NULL,
      "v", NULL },
    /* host lowercased, port canonical, scheme case-insensitive */
    { "SPRITE://S3.Example.COM:0080/bucket/Vol", SPRITE_SCHEME_HTTPS,
      "s3.example.com:80", "bucket", NULL, "Vol",
      "sprite://s3.example.com:80/bucket/Vol" },
    { "sprite://h/b12/v", SPRITE_SCHEME_HTTPS, "h", "b12", NULL, "v", NULL },
    /* 63 characters, the longest bucket name */
    { "sprite://h:65535/" "abcdefghijklmnopqrstuvwxyz0123456789"
      "abcdefghijklmnopqrstuvwxyz0/v", SPRITE_SCHEME_HTTPS, "h:65535",
      "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0",
      NULL, "v", NULL },
    { "sprite+file:///srv/sprite/vm1", SPRITE_SCHEME_FILE, NULL, NULL,
      "/srv/sprite", "vm1", NULL },
    { "sprite+file:///vm1", SPRITE_SCHEME_FILE, NULL, NULL, "/", "vm1",
      NULL },
    { "sprite+file:///my%20dir/x%C3%A9/..v..", SPRITE_SCHEME_FILE, NULL,
      NULL, "/my dir/x\xc3\xa9", "..v..", NULL },
    { "sprite+file:///a/%3Fq%23f%25/v", SPRITE_SCHEME_FILE, NULL, NULL,
      "/a/?q#f%", "v", NULL },
    { "sprite+file:///a/b~c/v", SPRITE_SCHEME_FILE, NULL, NULL, "/a/b~c",
      "v", NULL },
};

typedef struct BadUrl {
    const char *url;
    const char *why;            /* a substring of the error message */
} BadUrl;

static const BadUrl bad_urls[] = {
    { "", "empty" },
    { "s3://host/bucket/vol", "unknown scheme 's3'" },
    { "http://host/bucket/vol", "unknown scheme 'http'" },
    { "sprite+https://host/bucket/vol", "unknown scheme" },
    { "/srv/sprite/vol", "not a URL" },
    { "sprite:/host/bucket/vol", "not a URL" },
    { "sprite:///bucket/vol", "missing host" },
    { "sprite://:80/bucket/vol", "missing host" },
    { "sprite://host:/bucket/vol", "invalid port" },
    { "sprite://host:0/bucket/vol", "invalid port" },
    { "sprite://host:65536/bucket/vol", "invalid port" },
    { "sprite://host:12ab/bucket/vol", "invalid port" },
    { "sprite://host:-1/bucket/vol", "invalid port" },
    { "sprite://host:123456/bucket/vol", "invalid port" },
    { "sprite://ho_st/bucket/vol", "host name" },
    { "sprite://[::1/bucket/vol", "IPv6" },
    { "sprite://[]/bucket/vol", "IPv6" },
    { "sprite://[::1]x/bucket/vol", "after ']'" },
    { "sprite://user:pw@host/bucket/vol", "user information" },
    { "sprite://host", "missing bucket" },
    { "sprite://host/", "missing bucket" },
    { "sprite://host/bucket", "missing volume" },
    { "sprite://host/bucket/", "missing volume" },
    { "sprite://host//vol", "missing bucket" },
    { "sprite://host/bucket//vol", "empty path component" },
    { "sprite://host/bucket/dir/vol", "cannot contain '/'" },
    { "sprite://host/bucket/vol/", "cannot contain '/'" },
    { "sprite://host/bucket/vol?x=1", "query" },
    { "sprite://host/bucket/vol#frag", "fragment" },
    { "sprite://host/bucket/v%20l", "volume name" },
    { "sprite://host/bucket/v l", "escaped" },
    { "sprite://host/bucket/.", "not a volume name" },
    { "sprite://host/bucket/..", "not a volume name" },
    { "sprite://host/bucket/v\xc3\xa9", "volume name" },
    { "sprite://host/bucket/v+1", "volume name" },
    { "sprite://host/ab/vol", "3 to 63" },
    { "sprite://host/abcdefghijklmnopqrstuvwxyz0123456789"
      "abcdefghijklmnopqrstuvwxyz01/vol", "3 to 63" },
    { "sprite://host/Bucket/vol", "lowercase" },
    { "sprite://host/buc_ket/vol", "lowercase" },
    { "sprite://host/-bucket/vol", "begin and end" },
    { "sprite://host/bucket./vol", "begin and end" },
    { "sprite://host/buc..ket/vol", "'..'" },
    { "sprite://host/192.168.1.2/vol", "IP address" },
    { "sprite+file://srv/sprite/vol", "absolute" },
    { "sprite+file://localhost/srv/vol", "absolute" },
    { "sprite+file://", "absolute" },
    { "sprite+file:///", "missing volume" },
    { "sprite+file:///srv/sprite/", "missing volume" },
    { "sprite+file:///srv//vol", "empty component" },
    { "sprite+file:///srv/../vol", "'..'" },
    { "sprite+file:///srv/./vol", "'.'" },
    { "sprite+file:///srv/sprite/..", "'..'" },
    { "sprite+file:///srv/a%2Fb/vol", "escape" },
    { "sprite+file:///srv/a%zz/vol", "escape" },
    { "sprite+file:///srv/a%01/vol", "control" },
    { "sprite+file:///srv/a%FF/vol", "UTF-8" },
    { "sprite+file:///srv/sprite/vol?x", "query" },
    { "sprite+file:///srv/sprite/v%20l", "volume name" },
};

static void test_good(gconstpointer opaque)
{
    const GoodUrl *t = opaque;
    g_autoptr(GError) err = NULL;
    g_autoptr(SpriteUrl) u = sprite_url_parse(t->url, &err);
    g_autoptr(SpriteUrl) again = NULL;
    g_autofree char *s = NULL;
    g_autofree char *s2 = NULL;

    g_assert_no_error(err);
    g_assert_nonnull(u);
    g_assert_cmpint(u->scheme, ==, t->scheme);
    g_assert_cmpstr(u->host, ==, t->host);
    g_assert_cmpstr(u->bucket, ==, t->bucket);
    g_assert_cmpstr(u->root, ==, t->root);
    g_assert_cmpstr(u->volume, ==, t->volume);

    s = sprite_url_to_string(u);
    if (t->canonical) {
        g_assert_cmpstr(s, ==, t->canonical);
    } else if (t->scheme != SPRITE_SCHEME_FILE) {
        g_assert_cmpstr(s, ==, t->url);
    }
    /* the canonical form parses back to the same thing */
    again = sprite_url_parse(s, &err);
    g_assert_no_error(err);
    g_assert_cmpint(again->scheme, ==, u->scheme);
    g_assert_cmpstr(again->host, ==, u->host);
    g_assert_cmpstr(again->bucket, ==, u->bucket);
    g_assert_cmpstr(again->root, ==, u->root);
    g_assert_cmpstr(again->volume, ==, u->volume);
    s2 = sprite_url_to_string(again);
    g_assert_cmpstr(s2, ==, s);
}

static void test_bad(gconstpointer opaque)
{
    const BadUrl *t = opaque;
    g_autoptr(GError) err = NULL;
    SpriteUrl *u = sprite_url_parse(t->url, &err);

    g_assert_null(u);
    g_assert_error(err, SPRITE_ERROR, EINVAL);
    if (!strstr(err->message, t->why)) {
        g_test_message("URL '%s': message '%s' lacks '%s'", t->url,
                       err->message, t->why);
        g_test_fail();
    }
}

static void test_null_errp(void)
{
    g_assert_null(sprite_url_parse("nope", NULL));
    g_assert_null(sprite_url_parse(NULL, NULL));
    sprite_url_free(NULL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(good_urls); i++) {
        g_autofree char *name = g_strdup_printf("/url/good/%zu", i);

        g_test_add_data_func(name, &good_urls[i], test_good);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(bad_urls); i++) {
        g_autofree char *name = g_strdup_printf("/url/bad/%zu", i);

        g_test_add_data_func(name, &bad_urls[i], test_bad);
    }
    g_test_add_func("/url/null-errp", test_null_errp);
    return g_test_run();
}
