/* reconnect.c — the stub reconnects when its session's connection drops: the session was parked (the server
 * closes it with a CLOSE whose reason begins "parked:"), moved, or its node died (the connection just ends).
 *
 * Every batch frame is kept from the moment it is written until a reply covers it (replies come in order, so a
 * reply to batch N covers every batch up to N): a frame whose caller waits for its reply is only borrowed (its
 * bytes stay put until the reply comes); an async batch is not copied either: its buffer is taken over from the
 * batch writer, which gets a recycled one back (so keeping costs no memcpy and, once warm, no page faults). At most
 * FARGPU_RESUME_KEEP_MB (default 256) is kept unacknowledged: past half of it the next async call asks for a reply
 * (a PING, as a sync call would), which covers everything before it, so a long run of async work stays resumable.
 * On a drop the stub asks where its lease lives now (the pool manager, for a pool lease; else FARGPU_SERVER
 * again), reconnects with a HELLO carrying the session id and its resume key (HELLO_OK gave it), and the restored
 * session answers with the last batch it applied; every kept frame after it is sent again, in order, and the
 * session carries on. The wait is bounded (FARGPU_RESUME_TIMEOUT_S, default 60): a node that stays away, a
 * refusal (no parked state: the work died with its node), or a frame that was not kept ends the session with
 * CUDA_ERROR_DEVICE_UNAVAILABLE at the call that noticed, never a hang. FARGPU_RESUME=off turns it off. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fg_io.h"
#include "fg_msgpack.h"
#include "fgc_internal.h"
#include "fgc_reconnect.h"
#include "fgc_transport.h"

typedef struct {
    uint32_t seq;
    uint8_t *copy;     /* the whole frame, copied (NULL: borrowed, in iov, or owned) */
    uint8_t *own;      /* a batch buffer taken over from the writer: the frame is head + own[0 .. len - 16) */
    size_t own_cap;
    uint8_t head[FG_HEADER_SIZE];
    size_t len;
    struct iovec iov[2 + 2 * FGC_MAX_EXT];
    int n;
    int (*resend)(void *); /* a bulk copy's frame: its caller sends it again, with its bytes (bulk.c) */
    void *arg;
} kept;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* the sender thread keeps frames without g_fgc.mu */
#define POOL 8
#define TAKE_MIN (64u << 10) /* batch frames from this size on are kept by taking over their buffer */
static struct {
    uint8_t *buf;
    size_t cap;
} g_pool[POOL]; /* batch buffers of acknowledged frames, for the writers to reuse */
static int g_npool;
static kept *g_kept;
static size_t g_n, g_cap, g_bytes;
static uint32_t g_gap; /* a frame that could not be kept (0: none since the last reply) */
static uint32_t g_have; /* the last reply read (a resuming HELLO says so: a reply lost with the connection comes
                         * again) */
static char g_key[FGC_RESUME_KEY_CAP];
static const char *g_resuming;
static int g_resumes;

char *fgc_resume_key_buf(void) { return g_key; }
uint32_t fgc_resume_have(void) { return g_have; }
const char *fgc_resume_hello(void) { return g_resuming; }

/* Frames are kept while the session can resume: it has a resume key and FARGPU_RESUME is not "off". */
static int keeping(void) {
    static int off = -1;
    if (off < 0) {
        const char *e = getenv("FARGPU_RESUME");
        off = e && !strcmp(e, "off");
    }
    return g_key[0] && !off;
}

int fgc_resume_on(void) { return keeping(); }

static size_t keep_limit(void) {
    const char *e = getenv("FARGPU_RESUME_KEEP_MB");
    return (e && *e ? (size_t)strtoull(e, NULL, 10) : 256) << 20;
}

void fgc_resume_keep(const struct iovec *iov, int n, uint32_t seq, int want_reply) {
    if (!keeping()) return;
    pthread_mutex_lock(&mu);
    size_t len = 0;
    for (int i = 0; i < n; i++) len += iov[i].iov_len;
    kept k = {seq, NULL, NULL, 0, {0}, len, {{0}}, 0, NULL, NULL};
    int ok = n <= (int)(sizeof k.iov / sizeof k.iov[0]);
    if (ok && want_reply) {
        memcpy(k.iov, iov, (size_t)n * sizeof *iov);
        k.n = n;
    } else if (ok && g_bytes + len <= keep_limit() && (k.copy = (uint8_t *)malloc(len ? len : 1))) {
        size_t at = 0;
        for (int i = 0; i < n; i++) {
            memcpy(k.copy + at, iov[i].iov_base, iov[i].iov_len);
            at += iov[i].iov_len;
        }
        g_bytes += len;
    } else {
        ok = 0;
    }
    if (ok && g_n == g_cap) {
        size_t cap = g_cap ? g_cap * 2 : 16;
        kept *nk = (kept *)realloc(g_kept, cap * sizeof *nk);
        if (nk) {
            g_kept = nk;
            g_cap = cap;
        } else {
            ok = 0;
        }
    }
    if (ok) g_kept[g_n++] = k;
    else {
        if (k.copy) g_bytes -= len;
        free(k.copy);
        if (!g_gap) g_gap = seq;
    }
    pthread_mutex_unlock(&mu);
}

/* The next slot of the list (mu held); NULL when it cannot grow. */
static kept *slot(void) {
    if (g_n == g_cap) {
        size_t cap = g_cap ? g_cap * 2 : 16;
        kept *nk = (kept *)realloc(g_kept, cap * sizeof *nk);
        if (!nk) return NULL;
        g_kept = nk;
        g_cap = cap;
    }
    return &g_kept[g_n];
}

int fgc_resume_keep_writer(const uint8_t *head, fg_writer *w, uint32_t seq) {
    if (!keeping() || w->len < TAKE_MIN) return 0; /* a small frame is copied: cheaper than a whole buffer */
    pthread_mutex_lock(&mu);
    size_t len = FG_HEADER_SIZE + w->len;
    kept *k = g_bytes + w->cap <= keep_limit() ? slot() : NULL; /* (what it holds: the buffer's capacity) */
    if (!k) {
        if (!g_gap) g_gap = seq; /* a resume past this frame fails (the session ends with an error) */
        pthread_mutex_unlock(&mu);
        return 1;
    }
    *k = (kept){seq, NULL, w->buf, w->cap, {0}, len, {{0}}, 0, NULL, NULL};
    memcpy(k->head, head, FG_HEADER_SIZE);
    g_n++;
    g_bytes += w->cap;
    if (g_npool) { /* the writer goes on with a recycled buffer, or a new one of the same size */
        g_npool--;
        w->buf = g_pool[g_npool].buf;
        w->cap = g_pool[g_npool].cap;
    } else {
        w->buf = (uint8_t *)malloc(w->cap);
        if (!w->buf) w->cap = 0; /* (it grows one as it fills) */
    }
    pthread_mutex_unlock(&mu);
    return 1;
}

int fgc_resume_keep_call(uint32_t seq, int (*resend)(void *), void *arg) {
    if (!keeping()) return 0;
    pthread_mutex_lock(&mu);
    kept *k = slot();
    if (k) {
        *k = (kept){seq, NULL, NULL, 0, {0}, 0, {{0}}, 0, resend, arg};
        g_n++;
    } else if (!g_gap) {
        g_gap = seq;
    }
    pthread_mutex_unlock(&mu);
    return 1;
}

void fgc_resume_forget_call(uint32_t seq) {
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < g_n; i++)
        if (g_kept[i].resend && g_kept[i].seq == seq) {
            memmove(g_kept + i, g_kept + i + 1, (g_n - i - 1) * sizeof *g_kept);
            g_n--;
            if (!g_gap) g_gap = seq; /* (its frame can no longer be sent again) */
            break;
        }
    pthread_mutex_unlock(&mu);
}

size_t fgc_resume_kept_bytes(void) {
    pthread_mutex_lock(&mu);
    size_t b = keeping() ? g_bytes : 0;
    pthread_mutex_unlock(&mu);
    return b;
}

int fgc_resume_keep_full(void) { return fgc_resume_kept_bytes() > keep_limit() / 2; }

void fgc_resume_unkept(uint32_t seq) {
    pthread_mutex_lock(&mu);
    if (!g_gap) g_gap = seq;
    pthread_mutex_unlock(&mu);
}

void fgc_resume_acked(uint32_t seq) {
    pthread_mutex_lock(&mu);
    g_have = seq;
    size_t keep = 0;
    for (size_t i = 0; i < g_n; i++) {
        if ((int32_t)(g_kept[i].seq - seq) <= 0) {
            if (g_kept[i].copy) g_bytes -= g_kept[i].len;
            if (g_kept[i].own) g_bytes -= g_kept[i].own_cap;
            free(g_kept[i].copy);
            if (g_kept[i].own && g_npool < POOL) {
                g_pool[g_npool].buf = g_kept[i].own;
                g_pool[g_npool++].cap = g_kept[i].own_cap;
            } else {
                free(g_kept[i].own);
            }
        } else {
            g_kept[keep++] = g_kept[i];
        }
    }
    g_n = keep;
    if (g_gap && (int32_t)(g_gap - seq) <= 0) g_gap = 0;
    pthread_mutex_unlock(&mu);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One attempt: 1 connected (fd, applied), 0 unreachable (try again), -1 refused (reason). */
static int attempt(const char *ep, int *fd_out, uint32_t *applied, char *reason, size_t cap) {
    char err[256] = "";
    int fd = fgc_dial(ep, err, sizeof err);
    if (fd < 0) {
        snprintf(reason, cap, "cannot reach %s: %s", ep, err);
        return 0;
    }
    g_resuming = g_key;
    int bad = fgc_send_hello(fd);
    g_resuming = NULL;
    uint8_t hb[FG_HEADER_SIZE], buf[FG_MAX_HELLO];
    fg_header h;
    int to = fg_io_timeout_ms();
    /* the node fetches the parked state and a worker restores it before it answers: minutes at most */
    if (bad || fg_io_read_deadline(fd, hb, sizeof hb, 600000, to, NULL) || fg_header_decode(hb, &h, FG_MAX_HELLO) ||
        h.length > sizeof buf || fg_io_read_deadline(fd, buf, h.length, to, to, NULL)) {
        close(fd);
        snprintf(reason, cap, "the handshake with %s failed", ep);
        return 0;
    }
    fg_mp_value v;
    if (h.type != FG_T_HELLO_OK) {
        snprintf(reason, cap, "%s refused", ep);
        if (fg_mp_lookup(buf, h.length, "reason", &v) == 0 && v.type == 1)
            snprintf(reason, cap, "%.*s", (int)v.str_len, v.str);
        close(fd);
        /* "retry": this node could not take the session back, but its parked state is intact: try again */
        return fg_mp_lookup(buf, h.length, "retry", &v) == 0 && v.type == 3 && v.i ? 0 : -1;
    }
    if (fg_mp_lookup(buf, h.length, "applied_seq", &v) != 0 || v.type != 2 || v.i < 0) {
        close(fd);
        snprintf(reason, cap, "%s did not resume the session", ep);
        return -1;
    }
    *applied = (uint32_t)v.i;
    char key[80] = "";
    if (fg_mp_lookup(buf, h.length, "attach_key", &v) == 0 && v.type == 1 && v.str_len < sizeof key)
        memcpy(key, v.str, v.str_len);
    fgc_set_attach_key(key); /* data and callback connections attach to the new worker with its key */
    *fd_out = fd;
    return 1;
}

int fgc_resume(const char *closing) {
    const char *off = getenv("FARGPU_RESUME");
    if (!g_key[0] || !g_fgc.session[0] || (off && !strcmp(off, "off"))) return -1;
    if (closing && strncmp(closing, "parked:", 7)) return -1; /* a deliberate end, not a move */
    const char *t = getenv("FARGPU_RESUME_TIMEOUT_S");
    double limit = t && *t ? atof(t) : 60.0, deadline = now_s() + limit, pause = 0.1;
    pthread_mutex_lock(&g_fgc.wmu);
    if (g_fgc.fd >= 0) close(g_fgc.fd);
    g_fgc.fd = -1;
    pthread_mutex_unlock(&g_fgc.wmu);
    fgc_log(FGC_LOG_INFO, "session %s: %s; reconnecting to resume it", g_fgc.session,
            closing ? closing : "the connection to its node dropped");
    char reason[512] = "no attempt", ep[512], token[512];
    int fd = -1, rc = 0;
    uint32_t applied = 0;
    while (rc == 0 && now_s() < deadline) {
        token[0] = 0;
        const char *server = getenv("FARGPU_SERVER");
        if (fgc_lease_where(ep, sizeof ep, token, sizeof token) == 0) fgc_set_endpoint(ep, token[0] ? token : NULL);
        else if (server && *server) snprintf(ep, sizeof ep, "%s", server);
        else snprintf(ep, sizeof ep, "%s", fgc_endpoint());
        rc = attempt(ep, &fd, &applied, reason, sizeof reason);
        if (rc == 0) {
            usleep((useconds_t)(pause * 1e6));
            pause = pause < 2.0 ? pause * 2 : 2.0;
        }
    }
    if (rc != 1) {
        fgc_log(FGC_LOG_ERROR, "session %s could not be resumed: %s", g_fgc.session,
                rc == 0 ? "no node took it back in time (FARGPU_RESUME_TIMEOUT_S)" : reason);
        if (rc == 0) fgc_log(FGC_LOG_ERROR, "last attempt: %s", reason);
        return -1;
    }
    pthread_mutex_lock(&mu);
    int ok = !g_gap || (int32_t)(g_gap - applied) <= 0;
    uint32_t expect = applied + 1;
    for (size_t i = 0; i < g_n && ok; i++) {
        if ((int32_t)(g_kept[i].seq - applied) <= 0) continue;
        ok = g_kept[i].seq == expect++;
    }
    ok = ok && (int32_t)(g_fgc.seq - applied) >= 0 && expect == g_fgc.seq + 1;
    pthread_mutex_lock(&g_fgc.wmu);
    g_fgc.fd = fd;
    fgc_io_forget(); /* what the old connection's read-ahead held is moot */
    fgc_db_forget(); /* and no posted request is awaited: the new worker has no region, the frames go again */
    int resent = 0;
    for (size_t i = 0; i < g_n && ok; i++) {
        kept *k = &g_kept[i];
        if ((int32_t)(k->seq - applied) <= 0) continue;
        struct iovec one = {k->copy, k->len}, owned[2] = {{k->head, FG_HEADER_SIZE}, {k->own, k->len - FG_HEADER_SIZE}};
        if (k->resend) ok = k->resend(k->arg) == 0;
        else ok = fgc_io_write(k->copy ? &one : k->own ? owned : k->iov, k->copy ? 1 : k->own ? 2 : k->n, k->len) == 0;
        resent++;
    }
    pthread_mutex_unlock(&g_fgc.wmu);
    pthread_mutex_unlock(&mu);
    if (!ok) {
        fgc_log(FGC_LOG_ERROR, "session %s: work sent to its old node after batch %u is lost; it cannot go on",
                g_fgc.session, applied);
        return -1;
    }
    fgc_set_endpoint(ep, NULL);
    g_resumes++;
    fgc_log(FGC_LOG_INFO, "session %s resumed on %s after batch %u, %d batch(es) sent again (resume %d)",
            g_fgc.session, ep, applied, resent, g_resumes);
    return 0;
}
