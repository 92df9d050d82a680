/*
 * Sprite segment objects: codec (the format is specified in segment.h)
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "sprite/objstore.h"
#include "store/segment.h"

#define ROUND_UP(n, d) (((n) + (d) - 1) / (d) * (d))

static void put_le32(uint8_t *p, uint32_t v)
{
    v = GUINT32_TO_LE(v);
    memcpy(p, &v, 4);
}

static void put_le64(uint8_t *p, uint64_t v)
{
    v = GUINT64_TO_LE(v);
    memcpy(p, &v, 8);
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_LE(v);
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return GUINT64_FROM_LE(v);
}

void sprite_seg_header_free(SpriteSegHeader *h)
{
    if (h) {
        g_free(h->records);
        g_free(h->chunk_sums);
        g_free(h);
    }
}

static uint32_t nchunks_for(uint64_t data_len)
{
    return (data_len + SPRITE_CHUNK_SIZE - 1) / SPRITE_CHUNK_SIZE;
}

uint32_t sprite_seg_header_len(uint32_t nrecords, uint64_t data_len)
{
    uint64_t raw = SPRITE_SEG_FIXED + (uint64_t)nrecords * SPRITE_SEG_RECORD +
                   (uint64_t)nchunks_for(data_len) * 8;
    return ROUND_UP(raw, SPRITE_SEG_ALIGN);
}

uint32_t sprite_seg_chunk_len(const SpriteSegHeader *h, uint32_t i)
{
    uint64_t start = (uint64_t)i * SPRITE_CHUNK_SIZE;
    return MIN(SPRITE_CHUNK_SIZE, h->data_len - start);
}

bool sprite_seg_chunk_ok(const SpriteSegHeader *h, uint32_t i,
                         const void *data)
{
    return XXH64(data, sprite_seg_chunk_len(h, i), 0) == h->chunk_sums[i];
}

void sprite_seg_header_encode(SpriteSegHeader *h, const void *data,
                              void *buf)
{
    uint8_t *p = buf;
    uint32_t i;

    h->nchunks = nchunks_for(h->data_len);
    h->header_len = sprite_seg_header_len(h->nrecords, h->data_len);
    if (data) {
        g_free(h->chunk_sums);
        h->chunk_sums = g_new(uint64_t, h->nchunks);
        for (i = 0; i < h->nchunks; i++) {
            h->chunk_sums[i] = XXH64((const uint8_t *)data +
                                     (uint64_t)i * SPRITE_CHUNK_SIZE,
                                     sprite_seg_chunk_len(h, i), 0);
        }
    }

    memset(p, 0, h->header_len);
    memcpy(p, SPRITE_SEG_MAGIC, 8);
    put_le32(p + 8, SPRITE_SEG_VERSION);
    put_le32(p + 12, h->header_len);
    put_le64(p + 16, h->seq);
    put_le64(p + 24, h->volume_size);
    put_le32(p + 32, h->nrecords);
    put_le32(p + 36, h->nchunks);
    put_le64(p + 40, h->data_len);
    put_le64(p + 48, h->epoch);
    for (i = 0; i < h->nrecords; i++) {
        uint8_t *r = p + SPRITE_SEG_FIXED + (size_t)i * SPRITE_SEG_RECORD;
        put_le64(r, h->records[i].offset);
        put_le64(r + 8, h->records[i].length);
        put_le64(r + 16, h->records[i].data_off);
        put_le32(r + 24, h->records[i].kind);
        put_le32(r + 28, h->records[i].back);
    }
    for (i = 0; i < h->nchunks; i++) {
        put_le64(p + SPRITE_SEG_FIXED + (size_t)h->nrecords * SPRITE_SEG_RECORD +
                 (size_t)i * 8, h->chunk_sums[i]);
    }
    put_le64(p + 56, XXH64(p, h->header_len, 0));
}

/* Is @r a valid record of segment @seq of @version with @data_len bytes? */
static bool record_ok(const SpriteRecord *r, uint32_t version, uint64_t seq,
                      uint64_t data_len)
{
    bool in_data = r->data_off <= data_len &&
                   r->length <= data_len - r->data_off;
    uint64_t end = r->offset + r->length;

    if (r->back && r->kind != SPRITE_REC_REF) {
        return false;
    }
    switch (r->kind) {
    case SPRITE_REC_DATA:
    case SPRITE_REC_ZERO:
    case SPRITE_REC_REF:
        if (r->length == 0 || end < r->offset ||
            (r->kind == SPRITE_REC_DATA && !in_data)) {
            return false;
        }
        if (r->kind == SPRITE_REC_REF &&
            (version < 3 || r->back == 0 || r->back >= seq ||
             r->data_off + r->length < r->data_off)) {
            return false;
        }
        /* Within the disk, or (version 2) within the VM state area. */
        return end <= SPRITE_VMSTATE_BASE ||
               (version >= 2 && r->offset >= SPRITE_VMSTATE_BASE &&
                end <= SPRITE_VMSTATE_BASE + SPRITE_VMSTATE_LIMIT);
    case SPRITE_REC_CHECKPOINT:
        return version >= 2 && r->offset > 0 && r->length > 0 && in_data;
    case SPRITE_REC_GOTO:
    case SPRITE_REC_DELETE:
        return version >= 2 && r->offset > 0 && r->length == 0;
    default:
        return false;
    }
}

int sprite_seg_header_decode(const void *buf, size_t len, uint64_t seq,
                             SpriteSegHeader **out, uint32_t *need,
                             GError **errp)
{
    const uint8_t *p = buf;
    g_autoptr(SpriteSegHeader) h = NULL;
    g_autofree uint8_t *copy = NULL;
    uint32_t version, i;
    uint64_t sum;

    if (len < SPRITE_SEG_FIXED || memcmp(p, SPRITE_SEG_MAGIC, 8) != 0) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "segment %016" G_GINT64_MODIFIER "x is not a Sprite "
                    "segment (bad magic or truncated)", seq);
        return -EIO;
    }
    version = get_le32(p + 8);
    if (version > SPRITE_SEG_VERSION) {
        g_set_error(errp, SPRITE_ERROR, EPROTONOSUPPORT,
                    "segment %016" G_GINT64_MODIFIER "x has format version "
                    "%u, newer than this Sprite (%u): upgrade Sprite",
                    seq, version, SPRITE_SEG_VERSION);
        return -EPROTONOSUPPORT;
    }
    h = g_new0(SpriteSegHeader, 1);
    h->header_len = get_le32(p + 12);
    *need = h->header_len;
    if (h->header_len < SPRITE_SEG_ALIGN ||
        h->header_len % SPRITE_SEG_ALIGN || h->header_len > (64u << 20)) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "segment %016" G_GINT64_MODIFIER "x: bad header length "
                    "%u", seq, h->header_len);
        return -EIO;
    }
    if (len < h->header_len) {
        return -EAGAIN;
    }
    copy = g_memdup2(p, h->header_len);
    sum = get_le64(copy + 56);
    memset(copy + 56, 0, 8);
    if (XXH64(copy, h->header_len, 0) != sum) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "segment %016" G_GINT64_MODIFIER "x: header checksum "
                    "mismatch (corrupt object)", seq);
        return -EIO;
    }
    h->seq = get_le64(p + 16);
    h->volume_size = get_le64(p + 24);
    h->nrecords = get_le32(p + 32);
    h->nchunks = get_le32(p + 36);
    h->data_len = get_le64(p + 40);
    h->epoch = get_le64(p + 48);
    if (h->seq != seq || h->nchunks != nchunks_for(h->data_len) ||
        sprite_seg_header_len(h->nrecords, h->data_len) != h->header_len) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "segment %016" G_GINT64_MODIFIER "x: inconsistent "
                    "header", seq);
        return -EIO;
    }
    h->records = g_new0(SpriteRecord, h->nrecords);
    for (i = 0; i < h->nrecords; i++) {
        const uint8_t *r = p + SPRITE_SEG_FIXED + (size_t)i * SPRITE_SEG_RECORD;
        SpriteRecord *rec = &h->records[i];

        rec->offset = get_le64(r);
        rec->length = get_le64(r + 8);
        rec->data_off = get_le64(r + 16);
        rec->kind = get_le32(r + 24);
        rec->back = get_le32(r + 28);
        if (!record_ok(rec, version, h->seq, h->data_len)) {
            g_set_error(errp, SPRITE_ERROR, EIO,
                        "segment %016" G_GINT64_MODIFIER "x: record %u is "
                        "invalid", seq, i);
            return -EIO;
        }
    }
    h->chunk_sums = g_new(uint64_t, h->nchunks);
    for (i = 0; i < h->nchunks; i++) {
        h->chunk_sums[i] = get_le64(p + SPRITE_SEG_FIXED +
                                    (size_t)h->nrecords * SPRITE_SEG_RECORD +
                                    (size_t)i * 8);
    }
    *out = g_steal_pointer(&h);
    return 0;
}

char *sprite_key_segment(const char *volume, uint64_t seq)
{
    return g_strdup_printf("%s/seg/%016" G_GINT64_MODIFIER "x", volume, seq);
}

char *sprite_key_snapshot(const char *volume, uint64_t seq)
{
    return g_strdup_printf("%s/meta/%016" G_GINT64_MODIFIER "x", volume, seq);
}

char *sprite_key_descriptor(const char *volume)
{
    return g_strdup_printf("%s/volume", volume);
}

char *sprite_key_holds(const char *volume, uint64_t id)
{
    return g_strdup_printf("%s/hold/%016" G_GINT64_MODIFIER "x/", volume, id);
}

char *sprite_key_pin(const char *volume, uint64_t seq, const char *uuid)
{
    return g_strdup_printf("%s/pin/%016" G_GINT64_MODIFIER "x/%s", volume, seq,
                           uuid);
}

bool sprite_key_parse_pin(const char *key, uint64_t *seq)
{
    const char *p = strstr(key, "/pin/");
    char *end;

    if (!p || strlen(p) < 5 + 16 + 1 || p[5 + 16] != '/') {
        return false;
    }
    *seq = g_ascii_strtoull(p + 5, &end, 16);
    return end == p + 5 + 16;
}

bool sprite_key_parse_seq(const char *key, uint64_t *seq)
{
    const char *slash = strrchr(key, '/');
    char *end;

    if (!slash || strlen(slash + 1) != 16) {
        return false;
    }
    *seq = g_ascii_strtoull(slash + 1, &end, 16);
    return *end == '\0';
}

GBytes *sprite_desc_encode(const char *body)
{
    size_t blen = strlen(body);
    uint8_t *p = g_malloc(SPRITE_DESC_HEADER + blen);

    memcpy(p, SPRITE_DESC_MAGIC, 8);
    put_le32(p + 8, SPRITE_FORMAT_VERSION);
    put_le32(p + 12, blen);
    put_le64(p + 16, XXH64(body, blen, 0));
    memcpy(p + SPRITE_DESC_HEADER, body, blen);
    return g_bytes_new_take(p, SPRITE_DESC_HEADER + blen);
}

int sprite_desc_decode(GBytes *obj, char **body, GError **errp)
{
    size_t len;
    const uint8_t *p = g_bytes_get_data(obj, &len);
    uint32_t version, blen;

    if (len < SPRITE_DESC_HEADER || memcmp(p, SPRITE_DESC_MAGIC, 8) != 0) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "volume descriptor is not a Sprite descriptor");
        return -EIO;
    }
    version = get_le32(p + 8);
    if (version > SPRITE_FORMAT_VERSION) {
        g_set_error(errp, SPRITE_ERROR, EPROTONOSUPPORT,
                    "volume has format version %u, newer than this Sprite "
                    "(%u): upgrade Sprite", version, SPRITE_FORMAT_VERSION);
        return -EPROTONOSUPPORT;
    }
    blen = get_le32(p + 12);
    if (len != SPRITE_DESC_HEADER + (size_t)blen ||
        XXH64(p + SPRITE_DESC_HEADER, blen, 0) != get_le64(p + 16)) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "volume descriptor is corrupt (checksum or length)");
        return -EIO;
    }
    *body = g_strndup((const char *)p + SPRITE_DESC_HEADER, blen);
    return 0;
}

GBytes *sprite_snap_encode(uint64_t seq, const void *db, size_t len)
{
    uint8_t *p = g_malloc(SPRITE_SNAP_HEADER + len);

    memset(p, 0, SPRITE_SNAP_HEADER);
    memcpy(p, SPRITE_SNAP_MAGIC, 8);
    put_le32(p + 8, SPRITE_FORMAT_VERSION);
    put_le64(p + 16, seq);
    put_le64(p + 24, len);
    put_le64(p + 32, XXH64(db, len, 0));
    memcpy(p + SPRITE_SNAP_HEADER, db, len);
    return g_bytes_new_take(p, SPRITE_SNAP_HEADER + len);
}

int sprite_snap_decode(GBytes *obj, uint64_t *seq, const void **db,
                       size_t *len, GError **errp)
{
    size_t olen;
    const uint8_t *p = g_bytes_get_data(obj, &olen);
    uint32_t version;

    if (olen < SPRITE_SNAP_HEADER || memcmp(p, SPRITE_SNAP_MAGIC, 8) != 0) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "metadata snapshot has a bad magic or is truncated");
        return -EIO;
    }
    version = get_le32(p + 8);
    if (version > SPRITE_FORMAT_VERSION) {
        g_set_error(errp, SPRITE_ERROR, EPROTONOSUPPORT,
                    "metadata snapshot has format version %u, newer than "
                    "this Sprite (%u): upgrade Sprite",
                    version, SPRITE_FORMAT_VERSION);
        return -EPROTONOSUPPORT;
    }
    *seq = get_le64(p + 16);
    *len = get_le64(p + 24);
    if (olen != SPRITE_SNAP_HEADER + *len ||
        XXH64(p + SPRITE_SNAP_HEADER, *len, 0) != get_le64(p + 32)) {
        g_set_error(errp, SPRITE_ERROR, EIO,
                    "metadata snapshot is corrupt (checksum or length)");
        return -EIO;
    }
    *db = p + SPRITE_SNAP_HEADER;
    return 0;
}
