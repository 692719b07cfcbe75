/* fg_wire.h — the fargpu wire format: frame header, limits, and bounds-checked readers/writers.
 *
 * Everything that crosses the socket is little-endian and goes through these helpers. A reader never
 * reads past its end: a short read sets `failed` and yields zeros, so decoders check `failed` once at the
 * end of a record instead of after every field. See protocol/SPEC.md for the layout. */
#ifndef FG_WIRE_H
#define FG_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FG_MAGIC 0x31504746u /* "FGP1" in memory order */
#define FG_PROTO_VERSION 3u
#define FG_HEADER_SIZE 16u
#define FG_MAX_HELLO (64u * 1024u)
#define FG_DEFAULT_MAX_FRAME (80u * 1024u * 1024u) /* bulk copies are chunked below this */
#define FG_CHUNK (32u * 1024u * 1024u)          /* the stub's copy chunk size */
/* A load record named an image (by SHA-256) the server does not hold: send it (FG_OP_IMAGE_CHUNK), retry. */
#define FG_RESULT_NEED_IMAGE 0x7fffff00u
#define FG_MAX_IMAGE (2ull << 30) /* largest module or library image accepted */
#define FG_INDEX_UNWRITTEN (~0ull - 1) /* a reply's error index the node's driver left unwritten (cuMemBatchDecompressAsync) */
#define FG_RECORD_HEADER 8u
/* Bulk copies (FG_OP_BULK_HTOD / FG_OP_BULK_DTOH): raw bytes beside the frames, in pieces striped over the
 * session's connections (SPEC.md, "Bulk copies"). */
#define FG_BULK_PIECE (2u * 1024u * 1024u)
#define FG_BULK_MAX (1ull << 40)
#define FG_BULK_F_SYNC 1u
/* A staged async device→host copy of FG_LATER_BULK_MIN bytes or more that a REPLY delivers over the bulk path: its
 * length word has FG_LATER_BULK set and the connection count C in bits 56..62; its bytes follow the REPLY frame as
 * pieces (SPEC.md, "Replies"). */
#define FG_LATER_BULK_MIN (256u * 1024u)
#define FG_LATER_BULK (1ull << 63)
#define FG_LATER_C_SHIFT 56
#define FG_LATER_LEN_MASK ((1ull << 56) - 1)
#define FG_LATER_MAX_C 8

enum fg_frame_type {
    FG_T_HELLO = 1,     /* client → server, msgpack */
    FG_T_HELLO_OK = 2,  /* server → client, msgpack */
    FG_T_HELLO_ERR = 3, /* server → client, msgpack {reason}, then close */
    FG_T_BATCH = 4,     /* client → server, records */
    FG_T_REPLY = 5,     /* server → client */
    FG_T_CLOSE = 6,     /* server → client, msgpack {reason}, then close */
    FG_T_OUTPUT = 7,    /* server → client, bytes for the client's stdout (device printf), before a REPLY */
    FG_T_SHM = 8,       /* client → server: u64 size + a memfd (SCM_RIGHTS); server → client: u32 result */
};

enum fg_frame_flags {
    FG_F_WANT_REPLY = 1u, /* BATCH: its last record is synchronous and a REPLY follows */
};

typedef struct {
    uint32_t magic;
    uint16_t type;
    uint16_t flags;
    uint32_t length; /* payload bytes after the header */
    uint32_t seq;
} fg_header;

void fg_header_encode(const fg_header *h, uint8_t out[FG_HEADER_SIZE]);
/* Returns 0, or a static reason string when the header is not acceptable. */
const char *fg_header_decode(const uint8_t in[FG_HEADER_SIZE], fg_header *h, uint32_t max_payload);

/* ---- reader ---- */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    int failed;
} fg_reader;

static inline void fg_reader_init(fg_reader *r, const void *p, size_t n) {
    r->p = (const uint8_t *)p;
    r->end = r->p + n;
    r->failed = 0;
}
static inline size_t fg_reader_left(const fg_reader *r) { return (size_t)(r->end - r->p); }
static inline int fg_get(fg_reader *r, void *dst, size_t n) {
    if (r->failed || fg_reader_left(r) < n) {
        r->failed = 1;
        memset(dst, 0, n);
        return -1;
    }
    memcpy(dst, r->p, n);
    r->p += n;
    return 0;
}
/* Borrow n bytes in place (no copy); NULL and failed on a short buffer. */
static inline const uint8_t *fg_take(fg_reader *r, size_t n) {
    if (r->failed || fg_reader_left(r) < n) {
        r->failed = 1;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}
static inline uint16_t fg_get_u16(fg_reader *r) { uint16_t v; fg_get(r, &v, 2); return v; }
static inline uint32_t fg_get_u32(fg_reader *r) { uint32_t v; fg_get(r, &v, 4); return v; }
static inline uint64_t fg_get_u64(fg_reader *r) { uint64_t v; fg_get(r, &v, 8); return v; }

/* ---- growable writer ---- */
typedef struct {
    uint8_t *buf;
    size_t len;
    size_t cap;
    size_t limit; /* never grow past this; further writes set failed */
    int failed;
} fg_writer;

void fg_writer_init(fg_writer *w, size_t initial, size_t limit);
void fg_writer_free(fg_writer *w);
/* Reserve n bytes at the end and return a pointer to them (NULL and failed when over the limit). */
void *fg_put_space(fg_writer *w, size_t n);
static inline void fg_put(fg_writer *w, const void *src, size_t n) {
    void *d = fg_put_space(w, n);
    if (d && n) memcpy(d, src, n);
}
static inline void fg_put_u16(fg_writer *w, uint16_t v) { fg_put(w, &v, 2); }
static inline void fg_put_u32(fg_writer *w, uint32_t v) { fg_put(w, &v, 4); }
static inline void fg_put_u64(fg_writer *w, uint64_t v) { fg_put(w, &v, 8); }
static inline void fg_writer_reset(fg_writer *w) { w->len = 0; w->failed = 0; }

/* ---- records inside a BATCH ---- */
typedef struct {
    uint16_t op;
    uint16_t flags;
    uint32_t length;     /* argument bytes */
    const uint8_t *args; /* points into the frame */
} fg_record;

/* Iterate records: returns 1 with *rec filled, 0 at the clean end, -1 on a malformed record (reason set). */
int fg_next_record(fg_reader *batch, fg_record *rec, const char **reason);

static inline size_t fg_pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }

#endif
