/* batch.c — building, sending and answering batches (protocol/SPEC.md, "Batches" and "Replies").
 *
 * Async records accumulate in g_fgc.batch and go out when a sync call flushes, or unanswered: once the batch
 * passes FGC_SEND_AT, or when its oldest record has waited FARGPU_SEND_AFTER_US (sender.c). A sync call's reply
 * carries its result, the first deferred async error, its outputs (read straight into the caller's memory) and
 * the data of earlier async device→host copies. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fg_msgpack.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"
#include "fgc_memo.h"
#include "fgc_reconnect.h"
#include "fgc_transport.h"

fgc_state g_fgc = {.mu = PTHREAD_MUTEX_INITIALIZER, .wmu = PTHREAD_MUTEX_INITIALIZER, .fd = -1,
                   .ctx_sent = UINT64_MAX, .max_frame = FG_DEFAULT_MAX_FRAME};

static __thread CUresult t_last_error;

CUresult fgc_last_error(void) { return t_last_error ? t_last_error : CUDA_ERROR_NOT_INITIALIZED; }

CUresult fgc_state_error(void) {
    if (!g_fgc.initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (g_fgc.init_result != CUDA_SUCCESS) return g_fgc.init_result;
    if (g_fgc.broken) return g_fgc.broken;
    return CUDA_SUCCESS;
}

void fgc_mark_broken(CUresult err, const char *fmt, ...) {
    if (g_fgc.broken) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    g_fgc.broken = err;
    fgc_log(FGC_LOG_ERROR, "session with %s ended: %s. Further CUDA calls fail with %d.", fgc_endpoint(), msg,
            (int)err);
    pthread_mutex_lock(&g_fgc.wmu); /* never close under a write in flight (sender.c writes without mu) */
    if (g_fgc.fd >= 0) {
        close(g_fgc.fd);
        g_fgc.fd = -1;
    }
    pthread_mutex_unlock(&g_fgc.wmu);
}

static void rec_header(uint16_t op) {
    g_fgc.rec_start = g_fgc.batch.len;
    g_fgc.rec_ext = 0;
    fg_put_u16(&g_fgc.batch, op);
    fg_put_u16(&g_fgc.batch, 0);
    fg_put_u32(&g_fgc.batch, 0);
}

static void rec_end(void) {
    size_t len = g_fgc.batch.len - g_fgc.rec_start - FG_RECORD_HEADER + g_fgc.rec_ext;
    if (!g_fgc.batch.failed) {
        uint32_t l32 = (uint32_t)len;
        memcpy(g_fgc.batch.buf + g_fgc.rec_start + 4, &l32, 4);
    }
    size_t pad = fg_pad8(len) - len;
    static const uint8_t zeros[8];
    fg_put(&g_fgc.batch, zeros, pad);
}

/* Send the batch. Returns 0, or -1 with the connection marked broken. */
static int flush(int want_reply) {
    if (g_fgc.batch.failed) {
        fgc_mark_broken(CUDA_ERROR_OUT_OF_MEMORY, "a batch outgrew the stub's buffer");
        return -1;
    }
    size_t total = g_fgc.batch.len + g_fgc.ext_total;
    if (total == 0 && !want_reply) {
        g_fgc.batch_since_ns = 0;
        return 0;
    }
    fg_header h = {FG_MAGIC, FG_T_BATCH, want_reply ? FG_F_WANT_REPLY : 0, (uint32_t)total, ++g_fgc.seq};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    struct iovec iov[2 + 2 * FGC_MAX_EXT];
    int n = 0;
    iov[n++] = (struct iovec){hb, sizeof hb};
    size_t at = 0;
    for (int i = 0; i < g_fgc.n_ext; i++) {
        if (g_fgc.ext[i].at > at) iov[n++] = (struct iovec){g_fgc.batch.buf + at, g_fgc.ext[i].at - at};
        iov[n++] = (struct iovec){(void *)g_fgc.ext[i].p, g_fgc.ext[i].n};
        at = g_fgc.ext[i].at;
    }
    if (g_fgc.batch.len > at) iov[n++] = (struct iovec){g_fgc.batch.buf + at, g_fgc.batch.len - at};
    /* Kept to be sent again after a reconnect if the server never applied it: an async batch by taking over its
     * buffer (reconnect.c), anything else borrowed (its caller waits for the reply) or copied. */
    if (want_reply || g_fgc.n_ext || !fgc_resume_keep_writer(hb, &g_fgc.batch, h.seq))
        fgc_resume_keep(iov, n, h.seq, want_reply);
    pthread_mutex_lock(&g_fgc.wmu);
    /* A synchronous batch goes through the shared region's doorbell when the worker is spinning on it. */
    int rc = want_reply && fgc_db_post(iov, n, sizeof hb + total) ? 0 : fgc_io_write(iov, n, sizeof hb + total);
    pthread_mutex_unlock(&g_fgc.wmu);
    fg_writer_reset(&g_fgc.batch);
    g_fgc.n_ext = 0;
    g_fgc.ext_total = 0;
    g_fgc.batch_since_ns = 0;
    if (rc) {
        int err = errno;
        if (fgc_resume(NULL) == 0) return 0;
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "sending to the server failed: %s", strerror(err));
        return -1;
    }
    return 0;
}

static int read_into(fgc_dest *d, int nd, uint64_t len, size_t *got) {
    /* Fill the destinations in order with exactly len bytes. */
    size_t left = (size_t)len;
    *got = 0;
    for (int i = 0; i < nd && left; i++) {
        size_t k = d[i].n < left ? d[i].n : left;
        if (fgc_io_read(d[i].dst, k)) return -1;
        left -= k;
        *got += k;
    }
    return left ? -2 : 0;
}

static int copy_output(uint32_t n) {
    char buf[65536];
    while (n) {
        uint32_t k = n < sizeof buf ? n : (uint32_t)sizeof buf;
        if (fgc_io_read(buf, k)) return -1;
        fwrite(buf, 1, k, stdout);
        n -= k;
    }
    return 0;
}

static int discard(uint64_t n) {
    char buf[65536];
    while (n) {
        size_t k = n < sizeof buf ? (size_t)n : sizeof buf;
        if (fgc_io_read(buf, k)) return -1;
        n -= k;
    }
    return 0;
}

static void later_recount(void);

/* An async device→host copy whose bytes a dropped connection cut short in a reply (it counts as delivered): when
 * the resumed worker sends that reply again, its bytes go to it again instead of being dropped. */
static struct {
    uint64_t id, n;
    void *dst;
} g_part;

/* Async device→host copies a reply delivers over the bulk path (their bytes follow the frame, bulk.c): the reply's
 * being read, and those claimed by a reply a dropped connection cut short: a resumed worker sends that reply again,
 * and their bytes go to them again instead of being dropped. */
typedef struct {
    fgc_bulk_dest *v;
    size_t n, cap;
} dest_list;
static dest_list g_bulk, g_bulk_part;

static int dest_add(dest_list *l, void *dst, uint64_t id, uint64_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        fgc_bulk_dest *nv = (fgc_bulk_dest *)realloc(l->v, cap * sizeof *nv);
        if (!nv) return -1;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = (fgc_bulk_dest){dst, id, n};
    return 0;
}

static void *bulk_part_find(uint64_t id, uint64_t n) {
    for (size_t i = 0; i < g_bulk_part.n; i++)
        if (g_bulk_part.v[i].id == id && g_bulk_part.v[i].n == n) return g_bulk_part.v[i].dst;
    return NULL;
}

/* The reply was cut short: the bulk copies it claimed still await their bytes. */
static void bulk_keep_parts(void) {
    for (size_t i = 0; i < g_bulk.n; i++)
        if (g_bulk.v[i].dst && !bulk_part_find(g_bulk.v[i].id, g_bulk.v[i].n))
            dest_add(&g_bulk_part, g_bulk.v[i].dst, g_bulk.v[i].id, g_bulk.v[i].n);
    g_bulk.n = 0;
}

static CUresult read_reply_from(int exact, size_t *got) {
    uint8_t hb[FG_HEADER_SIZE];
    fg_header h;
    if (0) {
    lost: /* the connection failed in the middle of the reply: a resumed worker sends it again whole */
        {
            int e = errno;
            bulk_keep_parts();
            errno = e;
        }
        if (errno != ETIMEDOUT && fgc_resume(NULL) == 0) goto again;
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, errno == ETIMEDOUT ? "the server began a reply and then sent "
                        "nothing within FARGPU_IO_TIMEOUT_S" : "the server closed the connection mid-reply");
        return g_fgc.broken;
    }
again:
    if (fgc_io_read_first(hb, sizeof hb)) {
        if (errno != ETIMEDOUT && fgc_resume(NULL) == 0) goto again; /* reconnect.c: the batch went again */
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, errno == ETIMEDOUT ? "the server began a reply and then "
                        "sent nothing within FARGPU_IO_TIMEOUT_S" : "the server closed the connection");
        return g_fgc.broken;
    }
    const char *why = fg_header_decode(hb, &h, UINT32_MAX);
    while (!why && h.type == FG_T_OUTPUT) {
        /* Device printf output flushed by this call: into the process's stdout stream, as the driver would. */
        if (copy_output(h.length) || fgc_io_read(hb, sizeof hb)) {
            fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "the server closed the connection");
            return g_fgc.broken;
        }
        why = fg_header_decode(hb, &h, UINT32_MAX);
    }
    if (why) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "bad reply from the server: %s", why);
        return g_fgc.broken;
    }
    if (h.type == FG_T_CLOSE) {
        uint8_t buf[FG_MAX_HELLO];
        char reason[512] = "no reason given";
        if (h.length <= sizeof buf && fgc_io_read(buf, h.length) == 0) {
            fg_mp_value v;
            if (fg_mp_lookup(buf, h.length, "reason", &v) == 0 && v.type == 1)
                snprintf(reason, sizeof reason, "%.*s", (int)v.str_len, v.str);
        }
        if (fgc_resume(reason) == 0) goto again; /* parked: resumed where it is now */
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "the server closed the session: %s", reason);
        return g_fgc.broken;
    }
    struct {
        uint32_t result, deferred, deferred_op, n_later;
        uint64_t out_len;
    } fx;
    if (h.type != FG_T_REPLY || h.length < sizeof fx) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "malformed reply from the server");
        return g_fgc.broken;
    }
    if (fgc_io_read(&fx, sizeof fx)) goto lost;
    uint64_t expect = 0;
    for (int i = 0; i < g_fgc.n_outs; i++) expect += g_fgc.outs[i].n;
    if (fx.out_len > expect || (exact && fx.out_len != 0 && fx.out_len != expect)) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "reply outputs do not match the call");
        return g_fgc.broken;
    }
    size_t consumed = sizeof fx;
    int ri = read_into(g_fgc.outs, g_fgc.n_outs, fx.out_len, got);
    if (ri == -1) goto lost;
    if (ri) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "the server closed the connection mid-reply");
        return g_fgc.broken;
    }
    consumed += (size_t)fx.out_len;
    /* Async device→host copies: u64 id, u64 length, bytes — each one the stub asked for and not yet delivered
     * (by a host function's RUN message, for instance: then its bytes are dropped, never written again). */
    g_bulk.n = 0;
    int bulk_c = 0; /* the connections the bulk copies' bytes stripe over (one count per reply) */
    for (uint32_t i = 0; i < fx.n_later; i++) {
        uint64_t hd[2];
        void *dst = NULL;
        if (consumed + 16 <= h.length && fgc_io_read(hd, 16)) goto lost;
        if (consumed + 16 <= h.length && (hd[1] & FG_LATER_BULK)) { /* (id, length | BULK | C): bytes after the frame */
            uint64_t n = hd[1] & FG_LATER_LEN_MASK;
            int c = (int)((hd[1] >> FG_LATER_C_SHIFT) & 0x7f);
            int k = n ? fgc_later_claim(hd[0], n, 0, &dst) : -1;
            if (k == 0 && (dst = bulk_part_find(hd[0], n)) != NULL) k = 1;
            if (k < 0 || c < 1 || c > FG_LATER_MAX_C || (bulk_c && c != bulk_c) ||
                dest_add(&g_bulk, k == 1 ? dst : NULL, hd[0], n)) {
                fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "an async copy delivered over the bulk path does not "
                                "match (id %llu, %llu bytes, %d connections)", (unsigned long long)hd[0],
                                (unsigned long long)n, c);
                return g_fgc.broken;
            }
            bulk_c = c;
            consumed += 16;
            continue;
        }
        int k = consumed + 16 > h.length ? -1 : fgc_later_claim(hd[0], hd[1], 0, &dst);
        if (k == 0 && g_part.n && hd[0] == g_part.id && hd[1] == g_part.n) { /* cut short before: again, whole */
            k = 1;
            dst = g_part.dst;
        }
        if (k < 0 || hd[1] > h.length - consumed - 16) {
            fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "async copy data in the reply does not match");
            return g_fgc.broken;
        }
        if (k == 1 ? fgc_io_read(dst, (size_t)hd[1]) : discard(hd[1])) {
            if (k == 1) {
                g_part.id = hd[0];
                g_part.n = hd[1];
                g_part.dst = dst;
            }
            goto lost;
        }
        if (k == 1 && hd[0] == g_part.id) g_part.n = 0;
        consumed += 16 + (size_t)hd[1];
    }
    if (consumed != h.length) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "reply length mismatch");
        return g_fgc.broken;
    }
    if (g_bulk.n) {
        fgc_io_memory_end(); /* (a reply from the doorbell's mailbox: the pieces come over the sockets) */
        int br = fgc_bulk_receive(g_bulk.v, g_bulk.n, bulk_c);
        if (br == -3) {
            fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "the server delivered async copies over %d connections, "
                            "more than this session has open", bulk_c);
            return g_fgc.broken;
        }
        if (br) goto lost;
        g_bulk.n = 0;
    }
    g_bulk_part.n = 0; /* the reply is whole: nothing of it is awaited again */
    later_recount();
    fgc_resume_acked(h.seq);
    if (fx.deferred && fx.result == CUDA_SUCCESS) {
        fgc_log(FGC_LOG_DEBUG, "deferred error %d from async %s", (int)fx.deferred, fg_op_name(fx.deferred_op));
        return (CUresult)fx.deferred;
    }
    return (CUresult)fx.result;
}

/* Read the reply to the batch just sent (from the socket, or from the doorbell's mailbox). */
static CUresult read_reply(int exact, size_t *got) {
    CUresult r = read_reply_from(exact, got);
    fgc_io_memory_end();
    return r;
}

fg_writer *fgc_begin(uint16_t op) {
    fgc_mirror_before_op(op); /* managed and mapped memory (mirror.c): before the connection lock */
    CUresult e = fgc_state_error();
    if (e != CUDA_SUCCESS) {
        t_last_error = e;
        return NULL;
    }
    pthread_mutex_lock(&g_fgc.mu);
    if (g_fgc.broken) {
        t_last_error = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return NULL;
    }
    if (g_fgc.batch.buf == NULL) fg_writer_init(&g_fgc.batch, 1u << 20, (size_t)g_fgc.max_frame);
    if (g_fgc.batch.len + g_fgc.ext_total > FGC_FLUSH_AT && flush(0)) {
        t_last_error = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return NULL;
    }
    g_fgc.last_op = op;
    fgc_log(FGC_LOG_TRACE, "> %s", fg_op_name(op));
    if (fg_op_class(op) != 1) fgc_stats_sent(op); /* sync ops are counted when they are sent */
    uint64_t ctx = fgc_ctx_current();
    if (ctx != g_fgc.ctx_sent) {
        rec_header(FG_OP_SET_CTX);
        fg_put_u64(&g_fgc.batch, ctx);
        rec_end();
        g_fgc.ctx_sent = ctx;
    }
    g_fgc.n_outs = 0;
    rec_header(op);
    return &g_fgc.batch;
}

int fgc_begin_alone(uint16_t op, uint64_t *ctx, uint32_t *seq) {
    fgc_mirror_before_op(op);
    CUresult e = fgc_state_error();
    if (e != CUDA_SUCCESS) {
        t_last_error = e;
        return -1;
    }
    pthread_mutex_lock(&g_fgc.mu);
    if (g_fgc.broken || flush(0)) { /* what was batched before goes first, in a frame of its own */
        t_last_error = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return -1;
    }
    g_fgc.last_op = op;
    g_fgc.n_outs = 0;
    fgc_log(FGC_LOG_TRACE, "> %s", fg_op_name(op));
    fgc_stats_sent(op);
    *ctx = g_fgc.ctx_sent = fgc_ctx_current();
    *seq = ++g_fgc.seq;
    return 0;
}

void fgc_put_handle(fg_writer *w, const void *h) { fg_put_u64(w, (uint64_t)(uintptr_t)h); }

void fgc_put_cstr(fg_writer *w, const char *s) {
    size_t n = strlen(s) + 1;
    fg_put_u32(w, (uint32_t)n);
    fg_put(w, s, n);
}

void fgc_put_external(const void *p, size_t n) {
    if (g_fgc.n_ext >= FGC_MAX_EXT) { /* cannot happen with the stub's own callers; copy as a fallback */
        fg_put(&g_fgc.batch, p, n);
        return;
    }
    g_fgc.ext[g_fgc.n_ext++] = (fgc_ext){g_fgc.batch.len, p, n};
    g_fgc.ext_total += n;
    g_fgc.rec_ext += n;
}

void fgc_expect(void *dst, size_t n) {
    if (g_fgc.n_outs < FGC_MAX_OUTS) g_fgc.outs[g_fgc.n_outs++] = (fgc_dest){dst, n};
}

/* ---- the queue of async device→host copies (fgc_internal.h) ---- */

static pthread_mutex_t later_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t later_settled = PTHREAD_COND_INITIALIZER; /* a RUN message's copies arrived, or did not */

void fgc_expect_later(void *dst, size_t n) {
    pthread_mutex_lock(&later_mu);
    if (g_fgc.n_later == g_fgc.cap_later) {
        size_t cap = g_fgc.cap_later ? g_fgc.cap_later * 2 : 64;
        fgc_dest *nl = (fgc_dest *)realloc(g_fgc.later, cap * sizeof *nl);
        if (nl) g_fgc.later = nl;
        uint8_t *ns = nl ? (uint8_t *)realloc(g_fgc.later_state, cap) : NULL;
        if (ns) g_fgc.later_state = ns;
        if (!nl || !ns) { /* the record goes unsent with the batch: the connection is marked broken */
            pthread_mutex_unlock(&later_mu);
            g_fgc.batch.failed = 1;
            return;
        }
        g_fgc.cap_later = cap;
    }
    g_fgc.later_state[g_fgc.n_later] = FGC_LATER_PENDING;
    g_fgc.later[g_fgc.n_later++] = (fgc_dest){dst, n};
    pthread_mutex_unlock(&later_mu);
    g_fgc.later_bytes += n;
}

/* Drop the delivered copies at the front (later_mu held). */
static void later_trim(void) {
    size_t k = 0;
    while (k < g_fgc.n_later && g_fgc.later_state[k] == FGC_LATER_DONE) k++;
    if (!k) return;
    memmove(g_fgc.later, g_fgc.later + k, (g_fgc.n_later - k) * sizeof *g_fgc.later);
    memmove(g_fgc.later_state, g_fgc.later_state + k, g_fgc.n_later - k);
    g_fgc.n_later -= k;
    g_fgc.later_base += k;
}

int fgc_later_claim(uint64_t id, uint64_t len, int by_callback, void **dst) {
    int rc;
    *dst = NULL;
    pthread_mutex_lock(&later_mu);
    for (;;) {
        if (id < g_fgc.later_base) {
            /* Delivered and forgotten. A reply may name it again when the callback connection failed after a RUN
             * message carried it (the server cannot tell whether it arrived); a RUN message may not. */
            rc = !by_callback && len <= FG_CHUNK ? 0 : -1;
            break;
        }
        if (id - g_fgc.later_base >= g_fgc.n_later) { /* never asked for */
            rc = -1;
            break;
        }
        size_t i = (size_t)(id - g_fgc.later_base);
        int state = g_fgc.later_state[i];
        if (len != g_fgc.later[i].n && len != 0) {
            rc = -1;
            break;
        }
        if (state == FGC_LATER_RECEIVING && !by_callback) {
            /* A reply naming a copy the callback thread is receiving: the server gave up on that RUN message (the
             * callback connection is failing). Wait for the thread to finish with it, then decide. */
            pthread_cond_wait(&later_settled, &later_mu);
            continue;
        }
        if (state == FGC_LATER_PENDING) {
            g_fgc.later_state[i] = by_callback ? FGC_LATER_RECEIVING : FGC_LATER_DONE;
            *dst = g_fgc.later[i].dst;
            rc = 1;
            if (!by_callback) later_trim();
        } else {
            rc = by_callback ? -1 : 0; /* never written twice: a host function may have changed it since */
        }
        break;
    }
    pthread_mutex_unlock(&later_mu);
    return rc;
}

void fgc_later_settle(uint64_t id, int delivered) {
    pthread_mutex_lock(&later_mu);
    if (id >= g_fgc.later_base && id - g_fgc.later_base < g_fgc.n_later) {
        size_t i = (size_t)(id - g_fgc.later_base);
        if (g_fgc.later_state[i] == FGC_LATER_RECEIVING)
            g_fgc.later_state[i] = delivered ? FGC_LATER_DONE : FGC_LATER_PENDING;
        later_trim();
        pthread_cond_broadcast(&later_settled);
    }
    pthread_mutex_unlock(&later_mu);
}

CUresult fgc_later_collect_into(const void *p, size_t n) {
    const char *lo = (const char *)p;
    int hit = 0;
    pthread_mutex_lock(&later_mu);
    for (size_t i = 0; i < g_fgc.n_later && !hit; i++) {
        const char *d = (const char *)g_fgc.later[i].dst;
        hit = g_fgc.later_state[i] != FGC_LATER_DONE && d < lo + n && lo < d + g_fgc.later[i].n;
    }
    pthread_mutex_unlock(&later_mu);
    if (!hit) return CUDA_SUCCESS;
    fg_writer *w = fgc_begin(FG_OP_PING);
    if (!w) return fgc_last_error();
    return fgc_sync();
}

/* Bytes still awaited (g_fgc.mu held: later_bytes is its). */
static void later_recount(void) {
    pthread_mutex_lock(&later_mu);
    size_t b = 0;
    for (size_t i = 0; i < g_fgc.n_later; i++)
        if (g_fgc.later_state[i] != FGC_LATER_DONE) b += g_fgc.later[i].n;
    g_fgc.later_bytes = b;
    pthread_mutex_unlock(&later_mu);
}

static CUresult finish_sync(int exact, size_t *got) {
    rec_end();
    fgc_stats_sent(g_fgc.last_op);
    CUresult r;
    size_t dummy;
    if (flush(1)) r = g_fgc.broken;
    else r = read_reply(exact, got ? got : &dummy);
    g_fgc.n_outs = 0;
    uint16_t op = g_fgc.last_op;
    pthread_mutex_unlock(&g_fgc.mu);
    if (r != CUDA_SUCCESS && r != (CUresult)FG_RESULT_NEED_IMAGE) {
        const char *en = fg_result_name((int)r);
        fgc_log(FGC_LOG_DEBUG, "%s -> %s (%d)", fg_op_name(op), en ? en : "?", (int)r);
    }
    return r;
}

CUresult fgc_sync(void) { return finish_sync(1, NULL); }

int fgc_send_record_locked(int want_reply) {
    rec_end();
    if (want_reply) fgc_stats_sent(g_fgc.last_op);
    return flush(want_reply);
}

CUresult fgc_sync_ping_locked(int record_open) {
    if (record_open) rec_end();
    g_fgc.n_outs = 0;
    rec_header(FG_OP_PING);
    g_fgc.last_op = FG_OP_PING;
    return finish_sync(1, NULL);
}

CUresult fgc_ack_ping_locked(void) {
    g_fgc.n_outs = 0;
    rec_header(FG_OP_PING);
    fg_put_u32(&g_fgc.batch, 1); /* an acknowledgement: the server waits for no stream, collects no copy */
    g_fgc.last_op = FG_OP_PING;
    return finish_sync(1, NULL);
}

CUresult fgc_read_reply_locked(void) {
    size_t got;
    CUresult r = g_fgc.broken ? g_fgc.broken : read_reply(1, &got);
    g_fgc.n_outs = 0;
    pthread_mutex_unlock(&g_fgc.mu);
    return r;
}

/* Send the record, wait for the reply; on success remember the answer under the record's bytes (memo.c). With
 * clear, the cache is emptied first (a setter that changes something). Called with the lock held; releases it. */
static CUresult memo_miss(const uint8_t *key, size_t klen, uint64_t ctx, uint16_t op, int clear) {
    uint8_t kbuf[512];
    uint8_t *k = klen <= sizeof kbuf ? kbuf : (uint8_t *)malloc(klen);
    if (k) memcpy(k, key, klen);
    fgc_dest outs[FGC_MAX_OUTS];
    int n_outs = g_fgc.n_outs;
    memcpy(outs, g_fgc.outs, sizeof outs);
    if (clear) fgc_memo_forget_for(key, klen);
    fgc_stats_sent(op);
    CUresult r;
    size_t got;
    if (flush(1)) r = g_fgc.broken;
    else r = read_reply(1, &got);
    if (r == CUDA_SUCCESS && k) fgc_memo_store(k, klen, ctx, outs, n_outs);
    g_fgc.n_outs = 0;
    pthread_mutex_unlock(&g_fgc.mu);
    if (k != kbuf) free(k);
    if (r != CUDA_SUCCESS) {
        const char *en = fg_result_name((int)r);
        fgc_log(FGC_LOG_DEBUG, "%s -> %s (%d)", fg_op_name(op), en ? en : "?", (int)r);
    }
    return r;
}

static CUresult sync_memo(int setter) {
    rec_end();
    const uint8_t *key = g_fgc.batch.buf + g_fgc.rec_start;
    size_t klen = g_fgc.batch.len - g_fgc.rec_start;
    uint64_t ctx = g_fgc.ctx_sent;
    uint16_t op = g_fgc.last_op;
    if (!g_fgc.batch.failed && g_fgc.rec_ext == 0 && fgc_memo_lookup(key, klen, ctx, g_fgc.outs, g_fgc.n_outs)) {
        g_fgc.batch.len = g_fgc.rec_start; /* answered here: the record is not sent */
        g_fgc.n_outs = 0;
        pthread_mutex_unlock(&g_fgc.mu);
        fgc_stats_hit(op);
        return CUDA_SUCCESS;
    }
    return memo_miss(key, klen, ctx, op, setter);
}

CUresult fgc_sync_memo(void) { return sync_memo(0); }

/* A setter: the same call with the same arguments again changes nothing (only this process sets these), so it
 * is answered here; a different one goes to the server and first forgets the answers it may change. */
CUresult fgc_sync_memo_set(void) { return sync_memo(1); }

/* Stream captures under way in this process (begun and not yet ended through the stub). */
static _Atomic int captures;
void fgc_capture_begin(void) { atomic_fetch_add(&captures, 1); }
void fgc_capture_end(void) {
    if (atomic_fetch_sub(&captures, 1) <= 0) atomic_store(&captures, 0);
}
int fgc_capture_active(void) { return atomic_load(&captures) > 0; }

CUresult fgc_sync_var(size_t *got) { return finish_sync(0, got); }

CUresult fgc_async(void) {
    rec_end();
    CUresult r = CUDA_SUCCESS;
    if (g_fgc.later_bytes > FGC_PENDING_D2H_LIMIT || fgc_resume_keep_full()) {
        /* Bound the server's staging memory: collect pending device→host data now; or the frames kept for a
         * resume (reconnect.c): the reply acknowledges them. */
        rec_header(FG_OP_PING);
        rec_end();
        fgc_stats_sent(FG_OP_PING);
        size_t got;
        if (flush(1)) r = g_fgc.broken;
        else r = read_reply(1, &got);
    } else if (g_fgc.batch.len + g_fgc.ext_total > FGC_SEND_AT) {
        if (flush(0)) r = g_fgc.broken;
    } else if (g_fgc.batch.len) {
        fgc_sender_note();
    }
    pthread_mutex_unlock(&g_fgc.mu);
    return r;
}

int fgc_send_pending(void) { return flush(0); }

int fgc_send_pending_unlocked(void) {
    static fg_writer spare; /* sender.c's thread is the only caller: the buffer being written while mu is free */
    if (g_fgc.batch.failed || g_fgc.batch.len == 0 || g_fgc.n_ext) return flush(0); /* (no external bytes here:
                                                                                  sync calls send those at once) */
    if (!spare.buf) fg_writer_init(&spare, 1u << 20, (size_t)g_fgc.max_frame);
    if (!spare.buf) return flush(0);
    fg_writer out = g_fgc.batch;
    g_fgc.batch = spare;
    fg_writer_reset(&g_fgc.batch);
    g_fgc.batch_since_ns = 0;
    fg_header h = {FG_MAGIC, FG_T_BATCH, 0, (uint32_t)out.len, ++g_fgc.seq};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    struct iovec iov[2] = {{hb, sizeof hb}, {out.buf, out.len}};
    /* Kept for a resume: a large batch by taking over its buffer (it belongs to reconnect.c until the server has
     * it), a small one copied. */
    if (!fgc_resume_keep_writer(hb, &out, h.seq)) fgc_resume_keep(iov, 2, h.seq, 0);
    /* The write lock is taken before mu is let go: a later batch (with a later seq) cannot overtake this one. */
    pthread_mutex_lock(&g_fgc.wmu);
    pthread_mutex_unlock(&g_fgc.mu);
    int rc = fgc_io_write(iov, 2, sizeof hb + out.len);
    int err = errno;
    pthread_mutex_unlock(&g_fgc.wmu);
    pthread_mutex_lock(&g_fgc.mu);
    fg_writer_reset(&out);
    spare = out;
    if (rc) {
        if (fgc_resume(NULL) == 0) return 0;
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "sending to the server failed: %s", strerror(err));
        return -1;
    }
    return 0;
}

uint64_t fgc_handle_id(const void *h) { return (uint64_t)(uintptr_t)h; }

CUstream fgc_ptsz_stream(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }
