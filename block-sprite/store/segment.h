/*
 * Sprite segment objects: format and codec
 *
 * Copyright (c) 2026 The Sprite authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * This comment is the specification of the objects a volume keeps on the
 * object store.  docs/format.md summarises it.  All integers are
 * little-endian.  Checksums are XXH64 with seed 0.  Every object starts
 * with an 8-byte magic and a 4-byte format version; a reader refuses a
 * version it does not know ("written by a newer Sprite").
 *
 * Keys, for a volume named V:
 *   V/volume               the descriptor (written once, never replaced)
 *   V/seg/<seq>            segment number <seq>, 16 lowercase hex digits
 *   V/meta/<seq>           metadata snapshot covering segments 1..<seq>
 *   V/hold/<id>/<uuid>     a hold on checkpoint <id> (16 hex digits): the
 *                          volume of that uuid was created from it; the
 *                          body is that volume's URL
 *
 * DESCRIPTOR (V/volume):
 *    0  8  magic "SPRITEVD"
 *    8  4  format version (1)
 *   12  4  body length B
 *   16  8  XXH64 of the body
 *   24  B  body: a GKeyFile text, group [volume]:
 *            uuid=<volume uuid>  size=<bytes at creation>
 *            base=<URL of the base volume>  base-seq=<its pinned segment>
 *            base-checkpoint=<ID of the base's checkpoint read instead of
 *            its live state, if any>
 *   Valid iff the magic and version match and the checksum matches.
 *
 * SEGMENT (V/seg/<seq>): the writes of one flush, applied in order.
 *    0  8  magic "SPRITESG"
 *    8  4  format version (3; version 2 lacks record kind 6, version 1
 *          also kinds 3 to 5 and the VM state area; both are read the
 *          same way)
 *   12  4  header length H: multiple of 4096, the offset of the data
 *   16  8  seq, equal to the key's
 *   24  8  volume size after this segment
 *   32  4  number of records R
 *   36  4  number of chunks C = ceil(D / 65536)
 *   40  8  data length D
 *   48  8  writer epoch (0: no lease)
 *   56  8  XXH64 of bytes [0, H) with this field taken as zero
 *   64     R records of 32 bytes, in the order the writes were made:
 *            0 8 volume offset   8 8 length   16 8 data offset (in data)
 *           24 4 kind: 1 DATA (bytes at data offset), 2 ZERO (reads as
 *                zeroes: on a volume without base the range is unmapped)
 *           28 4 back: for kind 6, how many segments before this one
 *                the data is (>= 1); else zero
 *          DATA and ZERO records address either the disk, [0, 2^62), or
 *          the VM state area, [2^62, 2^62 + 2^61): savevm's stream of
 *          the VM state at byte pos is kept at 2^62 + pos.  Checkpoint
 *          records use the volume offset field for a checkpoint ID (>0):
 *                3 CHECKPOINT: copy the live map (disk and VM state) to
 *                  checkpoint ID; length and data offset locate its
 *                  description in the data, a GKeyFile text, group
 *                  [checkpoint]: name=, size= (disk bytes), vm-state-size=,
 *                  date-sec=, date-nsec=, vm-clock-nsec=, icount= (-1:
 *                  none), written= (data bytes the volume stored in
 *                  segments before this record)
 *                4 GOTO: replace the live map by checkpoint ID's, and the
 *                  volume size by its size (length 0)
 *                5 DELETE: forget checkpoint ID (length 0)
 *          and a sixth kind addresses the disk or the VM state area like
 *          DATA, with data stored before:
 *                6 REF: the range holds the length bytes at data offset of
 *                  the data of segment seq - back (the volume stores
 *                  VM state that did not change since a previous
 *                  checkpoint this way)
 *   64+32R C chunk checksums of 8 bytes: XXH64 of data bytes
 *          [i * 65536, min((i + 1) * 65536, D))
 *   then zero padding up to H
 *   H      D bytes of data
 * A segment is valid iff the object is exactly H + D bytes long, the
 * header checksum matches, and every chunk matches its checksum.  A chunk
 * is checked each time it is read from the store and the first time it
 * is read from the cache after open, so a corrupt or truncated object is
 * an I/O error, never data.
 *
 * METADATA SNAPSHOT (V/meta/<seq>):
 *    0  8  magic "SPRITEMS"
 *    8  4  format version (1)
 *   12  4  zero
 *   16  8  seq: the snapshot reflects segments 1..seq applied in order
 *   24  8  length L of the database
 *   32  8  XXH64 of the database
 *   40  L  a SQLite database (see meta/meta.h for its schema)
 *
 * The state of a volume is: descriptor, then the newest valid snapshot
 * (or an empty map), then every segment after it in sequence.  A gap in
 * the sequence is an error, never skipped.
 */
#ifndef SPRITE_SEGMENT_H
#define SPRITE_SEGMENT_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#define SPRITE_FORMAT_VERSION 1
#define SPRITE_SEG_VERSION 3
/* The disk is [0, SPRITE_VMSTATE_BASE); the VM state area follows. */
#define SPRITE_VMSTATE_BASE (1ULL << 62)
#define SPRITE_VMSTATE_LIMIT (1ULL << 61)
#define SPRITE_SEG_MAGIC "SPRITESG"
#define SPRITE_SNAP_MAGIC "SPRITEMS"
#define SPRITE_DESC_MAGIC "SPRITEVD"
#define SPRITE_SEG_ALIGN 4096
#define SPRITE_SEG_FIXED 64
#define SPRITE_SEG_RECORD 32
#define SPRITE_CHUNK_SIZE 65536
#define SPRITE_SNAP_HEADER 40
#define SPRITE_DESC_HEADER 24

typedef enum SpriteRecordKind {
    SPRITE_REC_DATA = 1,
    SPRITE_REC_ZERO = 2,
    SPRITE_REC_CHECKPOINT = 3,
    SPRITE_REC_GOTO = 4,
    SPRITE_REC_DELETE = 5,
    SPRITE_REC_REF = 6,
} SpriteRecordKind;

typedef struct SpriteRecord {
    uint64_t offset;
    uint64_t length;
    uint64_t data_off;
    uint32_t kind;
    uint32_t back;          /* REF: the data is in segment seq - back */
} SpriteRecord;

/* A parsed segment header. */
typedef struct SpriteSegHeader {
    uint64_t seq;
    uint32_t header_len;
    uint64_t volume_size;
    uint64_t data_len;
    uint64_t epoch;
    uint32_t nrecords;
    uint32_t nchunks;
    SpriteRecord *records;      /* nrecords, owned */
    uint64_t *chunk_sums;       /* nchunks, owned */
} SpriteSegHeader;

void sprite_seg_header_free(SpriteSegHeader *h);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SpriteSegHeader, sprite_seg_header_free)

/* Header length for @nrecords records and @data_len bytes of data. */
uint32_t sprite_seg_header_len(uint32_t nrecords, uint64_t data_len);

/*
 * Encode the header of @h into @buf of h->header_len bytes (zero
 * padded), computing h->chunk_sums from @data (h->data_len bytes; may be
 * NULL when the sums are already set).
 */
void sprite_seg_header_encode(SpriteSegHeader *h, const void *data,
                              void *buf);

/*
 * Parse the header in @buf (@len bytes, at least the fixed part).  Sets
 * *@need to the header length and returns -EAGAIN when @len is shorter;
 * -EIO for anything invalid, -EPROTONOSUPPORT for a newer version.
 * @seq is the sequence number the key promised.  @errp gets the reason.
 */
int sprite_seg_header_decode(const void *buf, size_t len, uint64_t seq,
                             SpriteSegHeader **out, uint32_t *need,
                             GError **errp);

/* Check chunk @i of @h against @data (its bytes). */
bool sprite_seg_chunk_ok(const SpriteSegHeader *h, uint32_t i,
                         const void *data);

/* Length of chunk @i. */
uint32_t sprite_seg_chunk_len(const SpriteSegHeader *h, uint32_t i);

/* Key helpers; caller frees. */
char *sprite_key_segment(const char *volume, uint64_t seq);
char *sprite_key_snapshot(const char *volume, uint64_t seq);
char *sprite_key_descriptor(const char *volume);
/* The prefix of the holds on checkpoint @id ("V/hold/<id>/"). */
char *sprite_key_holds(const char *volume, uint64_t id);
/* The pin of volume @uuid, a clone of this volume as of segment @seq
 * ("V/pin/<seq>/<uuid>"), and the seq out of one; false if not one. */
char *sprite_key_pin(const char *volume, uint64_t seq, const char *uuid);
bool sprite_key_parse_pin(const char *key, uint64_t *seq);
/* Parse the seq out of a ".../seg/<seq>" or ".../meta/<seq>" key; false if
 * it is not one. */
bool sprite_key_parse_seq(const char *key, uint64_t *seq);

/* Wrap and unwrap the simple envelopes (descriptor and snapshot). */
GBytes *sprite_desc_encode(const char *body);
int sprite_desc_decode(GBytes *obj, char **body, GError **errp);
GBytes *sprite_snap_encode(uint64_t seq, const void *db, size_t len);
int sprite_snap_decode(GBytes *obj, uint64_t *seq, const void **db,
                       size_t *len, GError **errp);

#endif /* SPRITE_SEGMENT_H */
