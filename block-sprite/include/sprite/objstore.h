/*
 * Sprite object store interface
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The object store moves bytes and nothing else (the "dumb replica client"
 * of Litestream, pkg/object of JuiceFS).  It knows nothing about volumes,
 * segments or extents.  Keys are '/'-separated strings relative to the
 * store's root (an S3 bucket, or a local directory): UTF-8, at most 1024
 * bytes, no control characters, no empty, "." or ".." component, and no
 * component starting with ".sprite-" (reserved for the local backend's own
 * files).  sprite_objstore_check_key() tells whether a key is valid.
 *
 * Contract shared by every backend:
 *  - Every operation is idempotent and may be retried by the caller.
 *  - Functions return 0 on success or a negative errno:
 *      -ENOENT     the object (or bucket/directory) does not exist
 *      -EEXIST     a conditional put lost (the object exists / changed)
 *      -EACCES     credentials refused (S3 403, signature mismatch)
 *      -EIO        the server answered with an error, or a corrupt reply
 *      -ETIMEDOUT  no answer within the configured time
 *      -ECONNREFUSED / -EHOSTUNREACH  transport failures
 *      -ENOTSUP    the backend cannot do what was asked
 *      -EINVAL     an invalid key or argument (nothing was sent)
 *    and set *errp to a message fit for a user (never containing secrets).
 *    -ENOENT is always distinct from transport errors.
 *  - Objects are written whole and atomically: a reader sees the old
 *    object, the new one, or none, never a part (the local backend writes
 *    a temporary file and renames it).
 *  - The dispatcher retries transient failures within the configured
 *    budget (SpriteObjstoreConfig.retry_ms).  A conditional put that is
 *    retried after its first attempt may have reached the server reads the
 *    object back when it then "loses", and succeeds if the object holds
 *    exactly its bytes: a retried put is idempotent.
 *  - All functions are thread-safe: one SpriteObjstore may be used from
 *    many threads at once, each call being one (or, with retries, a few)
 *    request(s) in flight.
 */
#ifndef SPRITE_OBJSTORE_H
#define SPRITE_OBJSTORE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

G_BEGIN_DECLS

#define SPRITE_ERROR (sprite_error_quark())
GQuark sprite_error_quark(void);

typedef struct SpriteObjstore SpriteObjstore;

typedef enum SpriteObjstoreScheme {
    SPRITE_SCHEME_HTTPS,    /* sprite://HOST[:PORT]/BUCKET/VOLUME */
    SPRITE_SCHEME_HTTP,     /* sprite+http://HOST[:PORT]/BUCKET/VOLUME */
    SPRITE_SCHEME_FILE,     /* sprite+file:///ABSOLUTE/DIR/VOLUME */
} SpriteObjstoreScheme;

/* A parsed volume URL.  Free with sprite_url_free(). */
typedef struct SpriteUrl {
    SpriteObjstoreScheme scheme;
    char *host;             /* "host" or "host:port"; NULL for FILE */
    char *bucket;           /* S3 bucket; NULL for FILE */
    char *root;             /* FILE: absolute directory of the store */
    char *volume;           /* volume name: [A-Za-z0-9._-]+, no "." or ".." */
} SpriteUrl;

/*
 * Parse @url.  Returns NULL and sets @errp for anything malformed or
 * unsupported (unknown scheme, missing bucket or volume, relative path,
 * query strings, user info, bad characters).
 */
SpriteUrl *sprite_url_parse(const char *url, GError **errp);
/* Canonical string form of @u (no secrets in it).  Caller frees. */
char *sprite_url_to_string(const SpriteUrl *u);
void sprite_url_free(SpriteUrl *u);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SpriteUrl, sprite_url_free)

typedef struct SpriteObjstoreConfig {
    const SpriteUrl *url;           /* which store (volume name unused) */
    const char *access_key_id;      /* S3 only; NULL: anonymous */
    const char *secret_access_key;  /* S3 only */
    const char *region;             /* S3 only; NULL: "us-east-1" */
    bool sslverify;                 /* https only: verify the peer; set it
                                     * (false, as in a zeroed config, turns
                                     * verification off) */
    const char *cafile;             /* https only: CA bundle, or NULL */
    unsigned timeout_ms;            /* per request; 0: default (30 s) */
    unsigned connect_timeout_ms;    /* 0: default (5 s) */
    /*
     * How long a request that failed for a reason that may pass (5xx,
     * throttling, reset, timeout, refused connection) is retried, with
     * exponential backoff, before the error is returned.  0: default
     * (SPRITE_OBJSTORE_RETRY_DEFAULT_MS); UINT_MAX: no retries.
     * sprite_objstore_check() never retries, so that opening fails fast.
     */
    unsigned retry_ms;
} SpriteObjstoreConfig;

#define SPRITE_OBJSTORE_RETRY_DEFAULT_MS 30000

/*
 * Open the store described by @cfg.  Does not contact the server (so it
 * cannot fail for a network reason); sprite_objstore_check() does.
 * Returns 0 and sets *@out, or -errno.  Free with sprite_objstore_close().
 */
int sprite_objstore_open(const SpriteObjstoreConfig *cfg,
                         SpriteObjstore **out, GError **errp);
void sprite_objstore_close(SpriteObjstore *os);

/* 0 if @key is a valid object key (see above), else -EINVAL. */
int sprite_objstore_check_key(const char *key, GError **errp);

/*
 * Check that the store is reachable, the credentials are accepted and the
 * bucket (directory) exists: -ENOENT if it does not, -EACCES if refused.
 */
int sprite_objstore_check(SpriteObjstore *os, GError **errp);

/*
 * Read @len bytes at @offset of object @key into @buf.  *@got is set to
 * the number of bytes read, which is less than @len only when the object
 * ends before @offset + @len.  Reading at or past the end gives *got = 0.
 */
int sprite_objstore_get(SpriteObjstore *os, const char *key,
                        uint64_t offset, size_t len, void *buf,
                        size_t *got, GError **errp);

/* Read the whole object @key.  On success *@out is a GBytes the caller
 * owns (g_bytes_unref) and, if @etag_out is not NULL, *@etag_out the
 * ETag of those very bytes (unquoted; g_free). */
int sprite_objstore_get_all(SpriteObjstore *os, const char *key,
                            GBytes **out, char **etag_out, GError **errp);

typedef enum SpriteObjstorePutFlags {
    SPRITE_PUT_DEFAULT = 0,
    /* Fail with -EEXIST if @key exists (S3 If-None-Match: *). */
    SPRITE_PUT_IF_NONE_MATCH = 1 << 0,
} SpriteObjstorePutFlags;

/*
 * Store @len bytes of @data as object @key, replacing it unless
 * SPRITE_PUT_IF_NONE_MATCH is given.  When @if_match is non-NULL the put
 * succeeds only if the current object's ETag equals @if_match (-EEXIST
 * otherwise, -ENOENT if it does not exist).  On success, if @etag_out is
 * non-NULL it receives the new object's ETag (unquoted; caller frees).
 */
int sprite_objstore_put(SpriteObjstore *os, const char *key,
                        const void *data, size_t len,
                        SpriteObjstorePutFlags flags, const char *if_match,
                        char **etag_out, GError **errp);

/* Size and ETag (unquoted, caller frees; may be NULL) of object @key. */
int sprite_objstore_head(SpriteObjstore *os, const char *key,
                         uint64_t *size, char **etag_out, GError **errp);

/* Delete @key.  Deleting an object that does not exist succeeds. */
int sprite_objstore_delete(SpriteObjstore *os, const char *key,
                           GError **errp);

/*
 * Call @fn for every object whose key starts with @prefix (NULL or "":
 * every object) and sorts after @start_after (NULL: from the beginning), in
 * ascending byte order of keys, until the listing is complete or @fn
 * returns non-zero (which is then returned).  The listing is complete when
 * this returns 0: a partial listing is always an error, and so is one that
 * the server returned out of order (-EIO; s3rver does that).
 */
typedef int (*SpriteObjstoreListFn)(const char *key, uint64_t size,
                                    void *opaque);
int sprite_objstore_list(SpriteObjstore *os, const char *prefix,
                         const char *start_after, SpriteObjstoreListFn fn,
                         void *opaque, GError **errp);

/* Human-readable description of the store for messages ("s3 bucket 'b' at
 * http://127.0.0.1:7480", "directory /srv/sprite").  Owned by @os. */
const char *sprite_objstore_describe(SpriteObjstore *os);

G_END_DECLS

#endif /* SPRITE_OBJSTORE_H */
