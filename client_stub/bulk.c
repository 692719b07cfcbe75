/* bulk.c — large copies over the socket(s), client side (protocol/SPEC.md, "Bulk copies"). A copy of
 * FGC_BULK_MIN bytes or more is one record (FG_OP_BULK_HTOD / FG_OP_BULK_DTOH) followed (host→device) or answered
 * (device→host) by its raw bytes in FG_BULK_PIECE pieces, piece j on connection j mod C. Connection 0 is the
 * session's own; the others are data connections the stub opens at its first bulk copy (FARGPU_STREAMS in all:
 * default 4 over TCP, where one stream is bound by one core's copying, and 1 over a unix socket), authenticated
 * with the session's attach key like the callback connection. Each connection has its own thread for the copy,
 * reading or writing straight from or to the application's buffer, so nothing is staged on this side; the worker
 * pipelines the pieces through its pinned ring. The connection lock is held for the whole copy, so records and
 * pieces never interleave. A host→device copy has its bytes on the wire before the call returns (pageable
 * semantics, as the driver takes them); a synchronous one then waits for a PING, which brings its error.
 *
 * Resuming (reconnect.c): a copy's record travels in a frame of its own (a SET_CTX and the copy: everything batched
 * before goes first), so the worker either applied all of it or none, and it is kept as a call that sends it
 * again. When a connection breaks mid-copy the stub resumes the session (the same worker, where it waits for its
 * client, or a restored one) and, unless the worker says it applied the copy, sends the frame again over the new
 * connection alone (C = 1) with all its bytes, or reads all its bytes again, before anything later: the copy
 * completes once, in order. So that a host→device copy's bytes can be sent again, the call returns only once a
 * reply covers it: an asynchronous one is followed by a PING too while resuming is on (one round trip).
 *
 * The same connections bring the bytes of async device→host copies into page-locked memory that a reply delivers
 * over the bulk path (batch.c reads the reply, fgc_bulk_receive the pieces after it, straight into the application's
 * buffers; SPEC.md, "Replies"). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fg_io.h"
#include "fg_wire.h"
#include "fgc_internal.h"
#include "fgc_reconnect.h"
#include "fgc_transport.h"

#define MAX_LANES 8

static int g_data_fd[MAX_LANES];
static int g_n_data, g_tried;
static pthread_mutex_t g_data_mu = PTHREAD_MUTEX_INITIALIZER;

static int streams_wanted(void) {
    const char *e = getenv("FARGPU_STREAMS");
    int n = e && *e ? atoi(e) : (strncmp(fgc_endpoint(), "unix:", 5) == 0 || strchr(fgc_endpoint(), '/') ? 1 : 4);
    return n < 1 ? 1 : n > MAX_LANES ? MAX_LANES : n;
}

/* Connections a copy may stripe over (opened at the first call; called without the connection lock). */
static int lanes(void) {
    pthread_mutex_lock(&g_data_mu);
    if (!g_tried) {
        g_tried = 1;
        int want = streams_wanted();
        while (g_n_data + 1 < want) {
            int fd = fgc_open_data_channel();
            if (fd < 0) {
                fgc_log(FGC_LOG_WARN, "could open only %d of %d data connections; bulk copies use %d", g_n_data + 1,
                        want, g_n_data + 1);
                break;
            }
            g_data_fd[g_n_data++] = fd;
        }
    }
    int n = g_n_data + 1;
    pthread_mutex_unlock(&g_data_mu);
    return n;
}

void fgc_bulk_forget_lanes(void) {
    pthread_mutex_lock(&g_data_mu);
    for (int i = 0; i < g_n_data; i++) {
        close(g_data_fd[i]);
        g_data_fd[i] = -1;
    }
    g_n_data = 0;
    g_tried = 0;
    pthread_mutex_unlock(&g_data_mu);
}

typedef struct {
    int fd, lane, C, htod;
    uint8_t *buf; /* the application's buffer */
    size_t n;
    int failed; /* -1 broken, -2 stalled */
    pthread_t t;
} lane_job;

/* Write n bytes of a host→device copy on fd, blocking for as long as the peer reads, but failing at once when the
 * connection has something to read: the peer never answers during the copy, so that is its end (a reset, a
 * relay that closed its other side when the worker died) or a CLOSE; a write into a peer that stopped reading
 * would otherwise wait forever. */
static int write_watching(int fd, const uint8_t *p, size_t n) {
    while (n) {
        struct pollfd pf = {fd, POLLOUT | POLLIN | POLLRDHUP, 0};
        int k = poll(&pf, 1, -1);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        if (pf.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
            errno = ECONNRESET;
            return -1;
        }
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *run_lane(void *arg) {
    lane_job *L = (lane_job *)arg;
    size_t pieces = (L->n + FG_BULK_PIECE - 1) / FG_BULK_PIECE;
    int to = fg_io_timeout_ms();
    for (size_t j = (size_t)L->lane, k = 0; j < pieces && !L->failed; j += (size_t)L->C, k++) {
        size_t off = j * FG_BULK_PIECE, len = L->n - off < FG_BULK_PIECE ? L->n - off : FG_BULK_PIECE;
        if (L->htod) L->failed = write_watching(L->fd, L->buf + off, len);
        else /* the first piece may wait for work queued before the copy (a dead peer: keepalive, conn.c); later
              * ones come at DMA speed */
            L->failed = fg_io_read_deadline(L->fd, L->buf + off, len, k == 0 ? -1 : to, to, NULL);
        if (L->failed) shutdown(L->fd, SHUT_RDWR); /* the other lanes (and the worker's) stop now, not at a deadline */
    }
    return NULL;
}

/* Move the pieces over C connections (g_fgc.mu held). Returns 0, -1 broken (errno), -2 stalled. */
static int move(uint8_t *buf, size_t n, int C, int htod) {
    lane_job L[MAX_LANES];
    memset(L, 0, sizeof L);
    pthread_mutex_lock(&g_data_mu);
    for (int i = 0; i < C; i++) L[i] = (lane_job){i ? g_data_fd[i - 1] : g_fgc.fd, i, C, htod, buf, n, 0, 0};
    pthread_mutex_unlock(&g_data_mu);
    int started = 1;
    for (int i = 1; i < C; i++) {
        if (pthread_create(&L[i].t, NULL, run_lane, &L[i])) {
            L[0].failed = -1;
            for (int k = 1; k < i; k++) shutdown(L[k].fd, SHUT_RDWR);
            break;
        }
        started++;
    }
    if (htod) pthread_mutex_lock(&g_fgc.wmu);
    if (!L[0].failed) run_lane(&L[0]);
    if (htod) pthread_mutex_unlock(&g_fgc.wmu);
    int bad = L[0].failed, err = errno;
    for (int i = 1; i < started; i++) {
        pthread_join(L[i].t, NULL);
        if (L[i].failed && !bad) bad = L[i].failed;
    }
    errno = err;
    return bad;
}

/* The server said something unasked between calls (a CLOSE when it parked or moved the session, conn.c): a PING
 * hears it, and resumes the session if it must, before any piece goes out. */
CUresult fgc_hear_unasked(void) {
    if (!fgc_conn_unasked()) return CUDA_SUCCESS;
    fg_writer *w = fgc_begin(FG_OP_PING);
    if (!w) return fgc_last_error();
    return fgc_sync();
}

/* One copy's frame: a SET_CTX naming its context, then its record (u64 address, u64 stream, u64 n, u32 flags,
 * u32 C); a device→host copy asks for a reply. */
typedef struct {
    uint32_t seq;
    int htod, sync;
    uint64_t ctx, dev, stream, n;
    uint8_t *buf; /* the application's buffer */
} copy_frame;

static int write_frame(const copy_frame *F, uint32_t C) {
    uint8_t f[FG_HEADER_SIZE + 16 + 40];
    fg_header h = {FG_MAGIC, FG_T_BATCH, F->htod ? 0 : FG_F_WANT_REPLY, 56, F->seq};
    fg_header_encode(&h, f);
    uint8_t *p = f + FG_HEADER_SIZE;
    uint16_t op = FG_OP_SET_CTX, zero = 0, bop = F->htod ? FG_OP_BULK_HTOD : FG_OP_BULK_DTOH;
    uint32_t l8 = 8, l32 = 32, flags = F->sync || !F->htod ? FG_BULK_F_SYNC : 0;
    memcpy(p, &op, 2);
    memcpy(p + 2, &zero, 2);
    memcpy(p + 4, &l8, 4);
    memcpy(p + 8, &F->ctx, 8);
    p += 16;
    memcpy(p, &bop, 2);
    memcpy(p + 2, &zero, 2);
    memcpy(p + 4, &l32, 4);
    memcpy(p + 8, &F->dev, 8);
    memcpy(p + 16, &F->stream, 8);
    memcpy(p + 24, &F->n, 8);
    memcpy(p + 32, &flags, 4);
    memcpy(p + 36, &C, 4);
    struct iovec iov = {f, sizeof f};
    return fgc_io_write(&iov, 1, sizeof f);
}

/* reconnect.c, while it resumes (g_fgc.mu and wmu held, the new connection in g_fgc.fd): the copy again, whole,
 * over that connection alone. */
static int resend(void *arg) {
    const copy_frame *F = (const copy_frame *)arg;
    if (write_frame(F, 1)) return -1;
    int to = fg_io_timeout_ms();
    int rc = F->htod ? write_watching(g_fgc.fd, F->buf, F->n) : fg_io_read_deadline(g_fgc.fd, F->buf, F->n, -1, to, NULL);
    fgc_log(FGC_LOG_INFO, "a bulk copy of %zu bytes %s again after the resume%s", (size_t)F->n,
            F->htod ? "sent" : "received", rc ? " failed" : "");
    return rc ? -1 : 0;
}

/* Send the frame and move the pieces (g_fgc.mu held). 0 done; else the session is broken (g_fgc.broken). */
static int copy(copy_frame *F, int C) {
    int kept = fgc_resume_keep_call(F->seq, resend, F);
    pthread_mutex_lock(&g_data_mu);
    if (C > g_n_data + 1) C = g_n_data + 1; /* a resume while the batch before went dropped the data connections */
    pthread_mutex_unlock(&g_data_mu);
    pthread_mutex_lock(&g_fgc.wmu);
    int rc = write_frame(F, (uint32_t)C) ? -1 : 0;
    pthread_mutex_unlock(&g_fgc.wmu);
    if (!rc) rc = move(F->buf, (size_t)F->n, C, F->htod);
    if (!rc) return 0;
    int err = errno;
    if (!kept) fgc_resume_unkept(F->seq);
    /* the frame and its bytes go again over the new connection (resend), unless the worker applied it */
    if (fgc_resume(NULL) == 0) return 0;
    fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, rc == -2 ? "a bulk copy stalled (nothing for FARGPU_IO_TIMEOUT_S)"
                    : "a connection broke during a bulk copy: %s", strerror(err));
    return -1;
}

CUresult fgc_bulk_htod(CUdeviceptr dst, const void *src, size_t n, CUstream stream, int sync) {
    CUresult h = fgc_hear_unasked();
    if (h != CUDA_SUCCESS) return h;
    int C = lanes();
    copy_frame F = {0, 1, sync, 0, dst, (uint64_t)(uintptr_t)stream, n, (uint8_t *)(uintptr_t)src};
    if (fgc_begin_alone(FG_OP_BULK_HTOD, &F.ctx, &F.seq)) return fgc_last_error();
    if (copy(&F, C)) {
        fgc_resume_forget_call(F.seq);
        CUresult r = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return r;
    }
    /* A reply covers the copy before the call returns (its bytes are the application's until then): always when
     * it is synchronous (the PING brings its error), and while resuming is on when it is not (an acknowledging
     * PING: the worker waits for no stream, so the call stays asynchronous). */
    CUresult r = CUDA_SUCCESS;
    if (sync) r = fgc_sync_ping_locked(0);
    else if (fgc_resume_on()) r = fgc_ack_ping_locked();
    else pthread_mutex_unlock(&g_fgc.mu);
    fgc_resume_forget_call(F.seq);
    return r;
}

CUresult fgc_bulk_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream stream) {
    CUresult h = fgc_hear_unasked();
    if (h != CUDA_SUCCESS) return h;
    int C = lanes();
    /* stream NULL: the legacy stream, for a synchronous copy */
    copy_frame F = {0, 0, 1, 0, src, (uint64_t)(uintptr_t)stream, n, (uint8_t *)dst};
    if (fgc_begin_alone(FG_OP_BULK_DTOH, &F.ctx, &F.seq)) return fgc_last_error();
    CUresult r = copy(&F, C) ? g_fgc.broken : CUDA_SUCCESS;
    if (r == CUDA_SUCCESS) r = fgc_read_reply_locked(); /* (a resume in it reads the bytes again first) */
    else pthread_mutex_unlock(&g_fgc.mu);
    fgc_resume_forget_call(F.seq);
    return r;
}

/* ---- async device→host copies a reply delivers over the bulk path ---- */

static _Atomic uint64_t g_deliv_copies, g_deliv_bytes, g_deliv_data_bytes;

void fgc_bulk_open_lanes(void) { (void)lanes(); }

typedef struct {
    int fd, lane, C, failed;
    const fgc_bulk_dest *d;
    size_t n;
    uint64_t bytes;
    pthread_t t;
} recv_lane;

/* Read len bytes of piece data into p (NULL: dropped). Lane 0 reads through conn.c (its read-ahead may hold the
 * start of the pieces); every read has the I/O deadline, as the rest of a message that has begun. */
static int recv_piece(recv_lane *L, uint8_t *p, size_t len) {
    uint8_t scratch[65536];
    int to = fg_io_timeout_ms();
    while (len) {
        size_t k = p ? len : len < sizeof scratch ? len : sizeof scratch;
        int rc;
        if (L->lane == 0) rc = fgc_io_read(p ? p : scratch, k);
        else if ((rc = fg_io_read_deadline(L->fd, p ? p : scratch, k, to, to, NULL)) == -2) errno = ETIMEDOUT;
        if (rc) return -1;
        if (p) p += k;
        len -= k;
    }
    return 0;
}

static void *recv_run(void *arg) {
    recv_lane *L = (recv_lane *)arg;
    uint64_t k = 0; /* the reply's piece count so far */
    for (size_t i = 0; i < L->n && !L->failed; i++)
        for (uint64_t off = 0; off < L->d[i].n && !L->failed; off += FG_BULK_PIECE, k++) {
            if (k % (uint64_t)L->C != (uint64_t)L->lane) continue;
            size_t len = (size_t)(L->d[i].n - off < FG_BULK_PIECE ? L->d[i].n - off : FG_BULK_PIECE);
            if (recv_piece(L, L->d[i].dst ? (uint8_t *)L->d[i].dst + off : NULL, len)) {
                L->failed = errno ? errno : ECONNRESET;
                shutdown(L->fd, SHUT_RDWR); /* the other lanes (and the worker's) stop now, not at a deadline */
            } else {
                L->bytes += len;
            }
        }
    return NULL;
}

int fgc_bulk_receive(const fgc_bulk_dest *d, size_t n, int C) {
    recv_lane L[MAX_LANES];
    pthread_mutex_lock(&g_data_mu); /* (waits for data connections another thread is opening) */
    int have = g_n_data + 1;
    if (C < 1 || C > have || C > MAX_LANES) {
        pthread_mutex_unlock(&g_data_mu);
        return -3;
    }
    for (int i = 0; i < C; i++) L[i] = (recv_lane){i ? g_data_fd[i - 1] : g_fgc.fd, i, C, 0, d, n, 0, 0};
    pthread_mutex_unlock(&g_data_mu);
    int started = 1;
    for (int i = 1; i < C; i++) {
        if (pthread_create(&L[i].t, NULL, recv_run, &L[i])) {
            L[0].failed = ENOMEM;
            for (int k = 1; k < i; k++) shutdown(L[k].fd, SHUT_RDWR);
            break;
        }
        started++;
    }
    if (!L[0].failed) recv_run(&L[0]);
    int bad = L[0].failed;
    for (int i = 1; i < started; i++) {
        pthread_join(L[i].t, NULL);
        if (L[i].failed && !bad) bad = L[i].failed;
        if (!L[i].failed) g_deliv_data_bytes += L[i].bytes;
    }
    if (bad) {
        errno = bad;
        return -1;
    }
    g_deliv_copies += n;
    for (size_t i = 0; i < n; i++) g_deliv_bytes += d[i].n;
    return 0;
}

__attribute__((destructor)) static void deliveries_print(void) {
    const char *e = getenv("FARGPU_STATS");
    if (!e || strcmp(e, "1") || !g_deliv_copies) return;
    fprintf(stderr, "fargpu: async device-to-host copies delivered over the bulk path: %llu (%llu bytes, %llu of "
            "them on data connections)\n", (unsigned long long)g_deliv_copies, (unsigned long long)g_deliv_bytes,
            (unsigned long long)g_deliv_data_bytes);
}
