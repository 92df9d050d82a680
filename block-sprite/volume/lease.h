/*
 * Sprite writer lease: one writer per volume
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The lease is the object V/lease, a GKeyFile text:
 *     [lease]
 *     epoch=<n>          incremented by every writer that takes it
 *     owner=<host>:<pid>:<random>
 *     expires=<unix time in ms>, 0 once released by a clean close
 * It is only ever written conditionally: taken with If-None-Match: * when
 * absent, or with If-Match on the ETag that was read (so two takers
 * cannot both win), renewed with If-Match on our own last ETag.  A writer
 * whose renewal loses has lost the lease and must stop.
 *
 * The lease is what refuses a second writer with a clear message; what
 * keeps a stale writer from forking the volume is the segment sequence
 * (I6 in docs/durability.md): segments are put with If-None-Match, and a
 * writer that takes over a lease that was not released first claims the
 * next segment number, so a previous writer that still runs fails at its
 * next flush.
 *
 * At take time the lease also probes whether the server honours
 * conditional writes (s3rver does not): if a put with If-None-Match of the
 * existing lease succeeds, fencing is unavailable and the caller is told.
 */
#ifndef SPRITE_LEASE_H
#define SPRITE_LEASE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "sprite/objstore.h"

typedef struct SpriteLease SpriteLease;

/* What taking the lease found. */
typedef struct SpriteLeaseInfo {
    uint64_t epoch;         /* ours */
    bool was_held;          /* the previous writer did not release it */
    bool fencing;           /* the server honours conditional writes */
} SpriteLeaseInfo;

/*
 * Take the lease of @volume on @os for @lease_ms (renewed by a thread
 * every third of that).  Fails with -EBUSY, naming the holder, if another
 * writer holds an unexpired lease and @takeover is false.  @url is for
 * messages.
 */
int sprite_lease_take(SpriteObjstore *os, const char *volume,
                      const char *url, unsigned lease_ms, bool takeover,
                      SpriteLease **out, SpriteLeaseInfo *info,
                      GError **errp);

/* Has the lease been lost to another writer? */
bool sprite_lease_lost(SpriteLease *l);

/* Release (best effort: a lease not released expires) and free. */
void sprite_lease_release(SpriteLease *l);

#endif /* SPRITE_LEASE_H */
