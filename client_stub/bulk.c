/* bulk.c — large copies over the socket(s), client side (protocol/SPEC.md, "Bulk copies"). A copy of
 * FGC_BULK_MIN bytes or more is one record (FG_OP_BULK_HTOD / FG_OP_BULK_DTOH) followed (host→device) or answered
 * (device→host) by its raw bytes in FG_BULK_PIECE pieces, piece j on connection j mod C. Connection 0 is the
 * session's own; the others are data connections the stub opens at its first bulk copy (FARGPU_STREAMS in all:
 * default 4 over TCP, where one stream is bound by one core's copying, and 1 over a unix socket), authenticated
 * with the session's attach key like the callback connection. Each connection has its own thread for the copy,
 * reading or writing straight from or to the application's buffer, so nothing is staged on this side; the worker
 * pipelines the pieces through its pinned ring. The connection lock is held for the whole copy, so records and
 * pieces never interleave. A host→device copy has its bytes on the wire before the call returns (pageable
 * semantics, as the driver takes them); a synchronous one then waits for a PING, which brings its error. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fg_io.h"
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

static void *run_lane(void *arg) {
    lane_job *L = (lane_job *)arg;
    size_t pieces = (L->n + FG_BULK_PIECE - 1) / FG_BULK_PIECE;
    int to = fg_io_timeout_ms();
    for (size_t j = (size_t)L->lane, k = 0; j < pieces && !L->failed; j += (size_t)L->C, k++) {
        size_t off = j * FG_BULK_PIECE, len = L->n - off < FG_BULK_PIECE ? L->n - off : FG_BULK_PIECE;
        if (L->htod) L->failed = fg_io_full(L->fd, L->buf + off, len, 1);
        else /* the first piece may wait for work queued before the copy; later ones come at DMA speed */
            L->failed = fg_io_read_deadline(L->fd, L->buf + off, len, k == 0 ? -1 : to, to, NULL);
    }
    return NULL;
}

/* Move the pieces over C connections (g_fgc.mu held). Returns 0, or -1 with the session marked broken. */
static int move(uint8_t *buf, size_t n, int C, int htod) {
    lane_job L[MAX_LANES];
    memset(L, 0, sizeof L);
    pthread_mutex_lock(&g_data_mu);
    int lost = C > g_n_data + 1; /* a resume in between dropped the data connections (conn.c) */
    pthread_mutex_unlock(&g_data_mu);
    if (lost) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, "the session moved during a bulk copy");
        return -1;
    }
    int started = 1;
    for (int i = 0; i < C; i++) L[i] = (lane_job){i ? g_data_fd[i - 1] : g_fgc.fd, i, C, htod, buf, n, 0, 0};
    for (int i = 1; i < C; i++) {
        if (pthread_create(&L[i].t, NULL, run_lane, &L[i])) {
            L[0].failed = -1;
            break;
        }
        started++;
    }
    if (htod) pthread_mutex_lock(&g_fgc.wmu);
    if (!L[0].failed) run_lane(&L[0]);
    if (htod) pthread_mutex_unlock(&g_fgc.wmu);
    int bad = L[0].failed;
    for (int i = 1; i < started; i++) {
        pthread_join(L[i].t, NULL);
        if (L[i].failed && !bad) bad = L[i].failed;
    }
    if (bad) {
        fgc_mark_broken(CUDA_ERROR_DEVICE_UNAVAILABLE, bad == -2 ? "a bulk copy stalled (nothing for "
                        "FARGPU_IO_TIMEOUT_S)" : "a connection broke during a bulk copy: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* The server said something unasked between calls (a CLOSE when it parked or moved the session, conn.c): a PING
 * hears it, and resumes the session if it must, before any piece goes out (the pieces are not kept for a resume). */
CUresult fgc_hear_unasked(void) {
    if (!fgc_conn_unasked()) return CUDA_SUCCESS;
    fg_writer *w = fgc_begin(FG_OP_PING);
    if (!w) return fgc_last_error();
    return fgc_sync();
}

CUresult fgc_bulk_htod(CUdeviceptr dst, const void *src, size_t n, CUstream stream, int sync) {
    CUresult h = fgc_hear_unasked();
    if (h != CUDA_SUCCESS) return h;
    int C = lanes();
    fg_writer *w = fgc_begin(FG_OP_BULK_HTOD);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dst);
    fgc_put_handle(w, stream);
    fg_put_u64(w, n);
    fg_put_u32(w, sync ? FG_BULK_F_SYNC : 0);
    fg_put_u32(w, (uint32_t)C);
    int bad = fgc_send_record_locked(0);
    if (!bad) fgc_resume_unkept(g_fgc.seq); /* its raw bytes are not kept for a resume (reconnect.c) */
    if (bad || move((uint8_t *)(uintptr_t)src, n, C, 1)) {
        CUresult r = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return r;
    }
    if (sync) return fgc_sync_ping_locked(0);
    pthread_mutex_unlock(&g_fgc.mu);
    return CUDA_SUCCESS;
}

CUresult fgc_bulk_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream stream) {
    CUresult h = fgc_hear_unasked();
    if (h != CUDA_SUCCESS) return h;
    int C = lanes();
    fg_writer *w = fgc_begin(FG_OP_BULK_DTOH);
    if (!w) return fgc_last_error();
    fg_put_u64(w, src);
    fgc_put_handle(w, stream); /* NULL: the legacy stream, for a synchronous copy */
    fg_put_u64(w, n);
    fg_put_u32(w, FG_BULK_F_SYNC);
    fg_put_u32(w, (uint32_t)C);
    if (fgc_send_record_locked(1) || move((uint8_t *)dst, n, C, 0)) {
        CUresult r = g_fgc.broken;
        pthread_mutex_unlock(&g_fgc.mu);
        return r;
    }
    return fgc_read_reply_locked();
}
