/*
 * Segment codec: round trip, and every kind of damage is refused.
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "store/segment.h"

static uint8_t *make(SpriteSegHeader **hp, uint8_t **datap)
{
    SpriteSegHeader *h = g_new0(SpriteSegHeader, 1);
    uint8_t *data, *buf;
    uint32_t i;

    h->seq = 7;
    h->volume_size = 1 << 20;
    h->data_len = 3 * SPRITE_CHUNK_SIZE + 100;
    h->nrecords = 4;
    h->records = g_new0(SpriteRecord, 4);
    h->records[0] = (SpriteRecord){ 0, 4096, 0, SPRITE_REC_DATA };
    h->records[1] = (SpriteRecord){ 8192, 1000, 0, SPRITE_REC_ZERO };
    h->records[2] = (SpriteRecord){ 1000, h->data_len - 4096, 4096,
                                    SPRITE_REC_DATA };
    /* VM state stored in segment 7 - 5 = 2, at its data offset 12288 */
    h->records[3] = (SpriteRecord){ SPRITE_VMSTATE_BASE + 4096, 65536, 12288,
                                    SPRITE_REC_REF, 5 };
    data = g_malloc(h->data_len);
    for (i = 0; i < h->data_len; i++) {
        data[i] = i * 7 + 3;
    }
    buf = g_malloc(sprite_seg_header_len(4, h->data_len));
    sprite_seg_header_encode(h, data, buf);
    *hp = h;
    *datap = data;
    return buf;
}

static void test_roundtrip(void)
{
    SpriteSegHeader *h, *d = NULL;
    g_autofree uint8_t *data = NULL;
    g_autofree uint8_t *buf = make(&h, &data);
    uint32_t need, i;

    g_assert_cmpint(sprite_seg_header_decode(buf, SPRITE_SEG_FIXED, 7, &d,
                                             &need, NULL), ==, -EAGAIN);
    g_assert_cmpuint(need, ==, h->header_len);
    g_assert_cmpint(sprite_seg_header_decode(buf, h->header_len, 7, &d,
                                             &need, NULL), ==, 0);
    g_assert_cmpuint(d->nrecords, ==, 4);
    g_assert_cmpuint(d->nchunks, ==, 4);
    for (i = 0; i < 4; i++) {
        g_assert_cmpuint(d->records[i].back, ==, h->records[i].back);
        g_assert_cmpuint(d->records[i].offset, ==, h->records[i].offset);
        g_assert_cmpuint(d->records[i].length, ==, h->records[i].length);
        g_assert_cmpuint(d->records[i].data_off, ==, h->records[i].data_off);
        g_assert_cmpuint(d->records[i].kind, ==, h->records[i].kind);
    }
    for (i = 0; i < d->nchunks; i++) {
        g_assert_true(sprite_seg_chunk_ok(d, i,
                                          data + i * SPRITE_CHUNK_SIZE));
    }
    data[SPRITE_CHUNK_SIZE + 5] ^= 1;
    g_assert_false(sprite_seg_chunk_ok(d, 1, data + SPRITE_CHUNK_SIZE));
    sprite_seg_header_free(d);
    sprite_seg_header_free(h);
}

static void test_damage(void)
{
    SpriteSegHeader *h, *d = NULL;
    g_autofree uint8_t *data = NULL;
    g_autofree uint8_t *buf = make(&h, &data);
    g_autoptr(GError) err = NULL;
    uint32_t need, off;

    /* Wrong sequence number (object stored under another key). */
    g_assert_cmpint(sprite_seg_header_decode(buf, h->header_len, 8, &d,
                                             &need, NULL), ==, -EIO);
    /* Any flipped bit of the header. */
    for (off = 0; off < SPRITE_SEG_FIXED + 4 * 32 + 4 * 8; off += 3) {
        buf[off] ^= 0x10;
        g_assert_cmpint(sprite_seg_header_decode(buf, h->header_len, 7, &d,
                                                 &need, NULL), <, 0);
        buf[off] ^= 0x10;
    }
    /* A reference to no earlier segment, or a "back" on another kind
     * (headers re-encoded: the checksum stays valid). */
    for (off = 0; off < 3; off++) {
        g_autofree uint8_t *bad = g_malloc(h->header_len);

        h->records[3].back = off == 0 ? 7 : off == 1 ? 0 : 5;
        h->records[0].back = off == 2;
        sprite_seg_header_encode(h, data, bad);
        g_assert_cmpint(sprite_seg_header_decode(bad, h->header_len, 7, &d,
                                                 &need, NULL), ==, -EIO);
    }
    h->records[0].back = 0;
    h->records[3].back = 5;
    /* A newer format version is named as such. */
    buf[8] = SPRITE_SEG_VERSION + 1;
    g_assert_cmpint(sprite_seg_header_decode(buf, h->header_len, 7, &d,
                                             &need, &err), ==,
                    -EPROTONOSUPPORT);
    g_assert_nonnull(strstr(err->message, "newer"));
    sprite_seg_header_free(h);
}

static void test_envelopes(void)
{
    g_autoptr(GBytes) desc = sprite_desc_encode("[volume]\nsize=512\n");
    g_autoptr(GBytes) snap = sprite_snap_encode(9, "database", 8);
    g_autofree char *body = NULL;
    const void *db;
    size_t len;
    uint64_t seq;
    uint8_t *raw;
    g_autoptr(GBytes) bad = NULL;

    g_assert_cmpint(sprite_desc_decode(desc, &body, NULL), ==, 0);
    g_assert_cmpstr(body, ==, "[volume]\nsize=512\n");
    g_assert_cmpint(sprite_snap_decode(snap, &seq, &db, &len, NULL), ==, 0);
    g_assert_cmpuint(seq, ==, 9);
    g_assert_cmpmem(db, len, "database", 8);

    raw = g_memdup2(g_bytes_get_data(snap, NULL), g_bytes_get_size(snap));
    raw[g_bytes_get_size(snap) - 1] ^= 1;
    bad = g_bytes_new_take(raw, g_bytes_get_size(snap));
    g_assert_cmpint(sprite_snap_decode(bad, &seq, &db, &len, NULL), ==, -EIO);
    g_clear_pointer(&bad, g_bytes_unref);
    /* Truncated. */
    bad = g_bytes_new(g_bytes_get_data(desc, NULL), g_bytes_get_size(desc) - 1);
    g_assert_cmpint(sprite_desc_decode(bad, &body, NULL), ==, -EIO);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/segment/roundtrip", test_roundtrip);
    g_test_add_func("/segment/damage", test_damage);
    g_test_add_func("/segment/envelopes", test_envelopes);
    return g_test_run();
}
