/*
 * Sprite object store: the interface between the dispatcher and backends
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The dispatcher (objstore.c) checks arguments and keys, handles the cases
 * every backend would handle the same way (zero-length reads), checks that
 * listings are sorted, and prefixes every error message with the store's
 * description.  A backend only moves bytes: it is called with a valid key,
 * offset + len does not overflow, and it reports failures with
 * sprite_objstore_fail() in terms of the operation and key only.
 */
#ifndef SPRITE_OBJSTORE_INT_H
#define SPRITE_OBJSTORE_INT_H

#include "sprite/objstore.h"

typedef struct SpriteObjstoreOps {
    const char *name;
    int (*check)(SpriteObjstore *os, GError **errp);
    /* Called with len > 0. */
    int (*get)(SpriteObjstore *os, const char *key, uint64_t offset,
               size_t len, void *buf, size_t *got, GError **errp);
    int (*get_all)(SpriteObjstore *os, const char *key, GBytes **out,
                   char **etag_out, GError **errp);
    int (*put)(SpriteObjstore *os, const char *key, const void *data,
               size_t len, SpriteObjstorePutFlags flags,
               const char *if_match, char **etag_out, GError **errp);
    int (*head)(SpriteObjstore *os, const char *key, uint64_t *size,
                char **etag_out, GError **errp);
    int (*delete)(SpriteObjstore *os, const char *key, GError **errp);
    /* Keys must come in ascending byte order; the dispatcher checks. */
    int (*list)(SpriteObjstore *os, const char *prefix,
                const char *start_after, SpriteObjstoreListFn fn,
                void *opaque, GError **errp);
    /* Frees the backend's state, including the SpriteObjstore itself. */
    void (*close)(SpriteObjstore *os);
} SpriteObjstoreOps;

/* Embedded as the first member of each backend's state. */
struct SpriteObjstore {
    const SpriteObjstoreOps *ops;
    char *description;      /* owned; freed by the dispatcher's close */
    unsigned retry_ms;      /* set by the dispatcher: retry budget */
};

/* Backend constructors; @cfg has been checked by the dispatcher. */
int sprite_file_open(const SpriteObjstoreConfig *cfg, SpriteObjstore **out,
                     GError **errp);
int sprite_s3_open(const SpriteObjstoreConfig *cfg, SpriteObjstore **out,
                   GError **errp);

/*
 * Set *@errp (when @errp is not NULL) to a SPRITE_ERROR whose code is the
 * positive errno @err, and return -@err.
 */
int sprite_objstore_fail(GError **errp, int err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/*
 * Prefix reserved for the local backend's temporary and lock files.  No
 * key component may start with it, so such files are never objects.
 */
#define SPRITE_OBJSTORE_RESERVED_PREFIX ".sprite-"

/* S3's limit on the length of a key, in bytes. */
#define SPRITE_OBJSTORE_KEY_MAX 1024

#endif /* SPRITE_OBJSTORE_INT_H */
