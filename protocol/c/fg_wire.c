/* fg_wire.c — frame header codec, the growable writer and the record iterator (see fg_wire.h). */
#include "fg_wire.h"

#include <stdlib.h>

void fg_header_encode(const fg_header *h, uint8_t out[FG_HEADER_SIZE]) {
    memcpy(out, &h->magic, 4);
    memcpy(out + 4, &h->type, 2);
    memcpy(out + 6, &h->flags, 2);
    memcpy(out + 8, &h->length, 4);
    memcpy(out + 12, &h->seq, 4);
}

const char *fg_header_decode(const uint8_t in[FG_HEADER_SIZE], fg_header *h, uint32_t max_payload) {
    memcpy(&h->magic, in, 4);
    memcpy(&h->type, in + 4, 2);
    memcpy(&h->flags, in + 6, 2);
    memcpy(&h->length, in + 8, 4);
    memcpy(&h->seq, in + 12, 4);
    if (h->magic != FG_MAGIC) return "bad magic (not a fargpu peer, or the stream lost sync)";
    if (h->type < FG_T_HELLO || h->type > FG_T_SHM) return "unknown frame type";
    if (h->length > max_payload) return "frame larger than the negotiated limit";
    if ((h->type == FG_T_HELLO || h->type == FG_T_HELLO_OK || h->type == FG_T_HELLO_ERR) && h->length > FG_MAX_HELLO)
        return "handshake frame too large";
    if (h->flags & ~(uint16_t)FG_F_WANT_REPLY) return "unknown frame flags";
    return NULL;
}

void fg_writer_init(fg_writer *w, size_t initial, size_t limit) {
    w->buf = initial ? (uint8_t *)malloc(initial) : NULL;
    w->cap = w->buf ? initial : 0;
    w->len = 0;
    w->limit = limit;
    w->failed = 0;
}

void fg_writer_free(fg_writer *w) {
    free(w->buf);
    w->buf = NULL;
    w->cap = w->len = 0;
}

void *fg_put_space(fg_writer *w, size_t n) {
    if (w->failed) return NULL;
    if (n > w->limit || w->len > w->limit - n) {
        w->failed = 1;
        return NULL;
    }
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n) cap *= 2;
        if (cap > w->limit) cap = w->limit;
        uint8_t *nb = (uint8_t *)realloc(w->buf, cap);
        if (!nb) {
            w->failed = 1;
            return NULL;
        }
        w->buf = nb;
        w->cap = cap;
    }
    void *p = w->buf + w->len;
    w->len += n;
    return p;
}

int fg_next_record(fg_reader *b, fg_record *rec, const char **reason) {
    if (fg_reader_left(b) == 0) return 0;
    if (fg_reader_left(b) < FG_RECORD_HEADER) {
        *reason = "truncated record header";
        return -1;
    }
    rec->op = fg_get_u16(b);
    rec->flags = fg_get_u16(b);
    rec->length = fg_get_u32(b);
    size_t padded = fg_pad8(rec->length);
    if (padded > fg_reader_left(b)) {
        *reason = "record longer than its frame";
        return -1;
    }
    rec->args = b->p;
    b->p += padded;
    return 1;
}
