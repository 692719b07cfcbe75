/* conn.c — the stub's connection to its node server: endpoint parsing (FARGPU_SERVER is "host:port",
 * "unix:/path" or a path; "tls://host:port" speaks TLS, tls.c), connect, the msgpack handshake (protocol version, token, ops hash, client info; on a
 * unix socket the shared-memory offer, shm.c), the session's second connections (callback, data), and
 * whole-buffer socket I/O. A failed connect or a refused handshake is reported with the endpoint and
 * the server's reason; the token is never printed. */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "fg_io.h"
#include "fg_msgpack.h"
#include "fgc_internal.h"
#include "fgc_lease.h"
#include "fgc_reconnect.h"
#include "fgc_tls.h"
#include "fgc_transport.h"

static char g_endpoint[512];

const char *fgc_endpoint(void) { return g_endpoint; }

static int connect_unix(const char *path) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int connect_tcp(const char *hostport, char *err, size_t errlen) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host) {
        snprintf(err, errlen, "expected host:port");
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    if (host[0] == '[') { /* [v6addr]:port */
        memmove(host, host + 1, strlen(host));
        char *rb = strchr(host, ']');
        if (rb) *rb = 0;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, colon + 1, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve: %s", gai_strerror(gai));
        return -1;
    }
    int fd = -1, last = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "%s", strerror(last ? last : ECONNREFUSED));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Keepalive: a wait with no deadline (a reply to a long call, the first piece of a device→host copy) still
     * ends when the node's host is gone without a word: after FARGPU_KEEPALIVE_S idle (default 15), then 3 probes
     * 5 s apart; and data sent to it stays unacknowledged for as long at most (TCP_USER_TIMEOUT), not the
     * kernel's quarter of an hour of retransmissions. */
    const char *ka = getenv("FARGPU_KEEPALIVE_S");
    int idle = ka && *ka ? atoi(ka) : 15, intvl = 5, cnt = 3;
    if (idle > 0) {
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
        unsigned user_ms = (unsigned)(idle + intvl * cnt) * 1000u;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof user_ms);
    }
    return fd;
}

int fgc_io_write(const struct iovec *iov_in, int iovcnt, size_t total) {
    struct iovec iov[64];
    if (iovcnt > 64) return -1;
    memcpy(iov, iov_in, sizeof(struct iovec) * (size_t)iovcnt);
    fgc_db_note_socket_frame(); /* a worker spinning on the doorbell's mailbox turns to the socket now */
    struct iovec *v = iov;
    size_t done = 0;
    while (done < total) {
        /* MSG_NOSIGNAL: a peer that went away (a parked session's worker exits) is an error here, not SIGPIPE */
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)(iovcnt > IOV_MAX ? IOV_MAX : iovcnt)};
        ssize_t n = sendmsg(g_fgc.fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)n;
        while (iovcnt > 0 && (size_t)n >= v->iov_len) {
            n -= (ssize_t)v->iov_len;
            v++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            v->iov_base = (char *)v->iov_base + n;
            v->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* Reads of the session's connection go through a small read-ahead buffer: the start of a reply is read with one
 * recv of up to READ_AHEAD bytes, so a small reply (header, fixed part, outputs) costs one system call, not three.
 * Only replies are read this way, and the server sends nothing unasked after a reply but a CLOSE, which then waits
 * here for the next read. A reply the doorbell left in shared memory (doorbell.c) is read from there instead. */
#define READ_AHEAD 8192
static uint8_t g_ahead[READ_AHEAD];
static size_t g_ahead_at, g_ahead_end;
static const uint8_t *g_mem; /* the reply in the doorbell's mailbox, while it is read */
static size_t g_mem_left;

void fgc_io_from_memory(const void *p, size_t n) {
    g_mem = (const uint8_t *)p;
    g_mem_left = n;
}

void fgc_io_memory_end(void) { g_mem = NULL; }

void fgc_io_forget(void) { g_ahead_at = g_ahead_end = 0; } /* a new connection: what the old one sent is moot */

size_t fgc_io_buffered(void) { return g_ahead_end - g_ahead_at; }

/* 1 when the session's connection holds something no call asked for: bytes read ahead, or a CLOSE (or the end of
 * the connection) that a server sent between calls when it parked or moved the session. A bulk copy hears it
 * before it starts (bulk.c), so the session resumes first instead of breaking in the middle of the copy. */
int fgc_conn_unasked(void) {
    if (fgc_io_buffered()) return 1;
    if (g_fgc.fd < 0) return 0;
    struct pollfd pf = {g_fgc.fd, POLLIN | POLLRDHUP, 0};
    return poll(&pf, 1, 0) > 0;
}

/* Serve what is buffered (memory or read-ahead); returns the bytes still to read from the socket, or SIZE_MAX
 * when a reply in memory is shorter than its reader expects. */
static size_t take_buffered(uint8_t **dst, size_t n) {
    if (g_mem) {
        if (n > g_mem_left) return SIZE_MAX;
        memcpy(*dst, g_mem, n);
        g_mem += n;
        g_mem_left -= n;
        return 0;
    }
    size_t k = g_ahead_end - g_ahead_at < n ? g_ahead_end - g_ahead_at : n;
    if (k) {
        memcpy(*dst, g_ahead + g_ahead_at, k);
        g_ahead_at += k;
        *dst += k;
    }
    return n - k;
}

/* Part of a message that has begun: every byte within the I/O timeout (fg_io.h). */
int fgc_io_read(void *dst, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    size_t left = take_buffered(&d, n);
    if (left == SIZE_MAX) {
        errno = EPROTO;
        return -1;
    }
    if (!left) return 0;
    int to = fg_io_timeout_ms();
    int rc = fg_io_read_deadline(g_fgc.fd, d, left, to, to, NULL);
    if (rc == -2) errno = ETIMEDOUT;
    return rc ? -1 : 0;
}

/* The start of a reply: the server may work on the call as long as it takes. A posted doorbell request's reply may
 * be in shared memory (doorbell.c). Else a short spin first (FARGPU_SPIN_US µs, default 0: off; measured by
 * bench/transport_gpu.sh): most replies come within a round trip; then one blocking recv into the read-ahead. */
int fgc_io_read_first(void *dst, size_t n) {
    int db = fgc_db_wait();
    if (db < 0) {
        errno = EPROTO;
        return -1;
    }
    if (db == 0 && g_ahead_at == g_ahead_end && g_fgc.fd >= 0) {
        static int spin = -1;
        if (spin < 0) spin = fg_io_spin_us("FARGPU_SPIN_US", 0);
        fg_io_spin_readable(g_fgc.fd, spin);
        ssize_t k;
        do k = recv(g_fgc.fd, g_ahead, sizeof g_ahead, 0);
        while (k < 0 && errno == EINTR);
        if (k <= 0) {
            if (k == 0) errno = ECONNRESET;
            return -1;
        }
        g_ahead_at = 0;
        g_ahead_end = (size_t)k;
    }
    return fgc_io_read(dst, n);
}

/* Read one handshake frame into buf (at most cap bytes). Returns its type, or -1. */
static int recv_small_frame(uint8_t *buf, size_t cap, size_t *len) {
    uint8_t hb[FG_HEADER_SIZE];
    fg_header h;
    /* The worker opens the device before it answers (seconds on a real GPU): a generous first deadline. */
    int to = fg_io_timeout_ms();
    if (fg_io_read_deadline(g_fgc.fd, hb, sizeof hb, to < 0 ? -1 : 4 * to, to, NULL)) return -1;
    if (fg_header_decode(hb, &h, FG_MAX_HELLO) || h.length > cap) return -1;
    if (fgc_io_read(buf, h.length)) return -1;
    *len = h.length;
    return h.type;
}

static void mp_copy_str(const uint8_t *buf, size_t n, const char *key, char *dst, size_t cap) {
    fg_mp_value v;
    dst[0] = 0;
    if (fg_mp_lookup(buf, n, key, &v) == 0 && v.type == 1) {
        size_t k = v.str_len < cap - 1 ? v.str_len : cap - 1;
        memcpy(dst, v.str, k);
        dst[k] = 0;
    }
}

static char g_token[512];
static char g_attach_key[80];
static char g_driver_version[96]; /* the node driver's version string from HELLO_OK ("" when not told) */

const char *fgc_remote_driver_version(void) { return g_driver_version; }

static int is_unix(const char *ep) {
    return !fgc_tls_endpoint(ep, NULL) && (strncmp(ep, "unix:", 5) == 0 || strchr(ep, '/') != NULL);
}

static int dial(const char *ep, char *err, size_t errlen) {
    int fd;
    const char *hp;
    if (fgc_tls_endpoint(ep, &hp)) { /* "tls://host:port": TLS through a relay thread (tls.c) */
        fd = connect_tcp(hp, err, errlen);
        if (fd >= 0) fd = fgc_tls_wrap(fd, hp, err, errlen);
    } else if (strncmp(ep, "unix:", 5) == 0) {
        fd = connect_unix(ep + 5);
        if (fd < 0) snprintf(err, errlen, "%s", strerror(errno));
    } else if (strchr(ep, '/')) {
        fd = connect_unix(ep);
        if (fd < 0) snprintf(err, errlen, "%s", strerror(errno));
    } else {
        fd = connect_tcp(ep, err, errlen);
    }
    return fd;
}

/* A HELLO for fd: the session's own (attach 0), or one for its callback (1) or a data connection (2). */
static int send_hello(int fd, int attach) {
    char host[256] = "", exe[512] = "";
    gethostname(host, sizeof host - 1);
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) exe[el] = 0;
    fg_writer w;
    fg_writer_init(&w, 1024, FG_MAX_HELLO);
    const char *rs = attach ? NULL : fgc_resume_hello(); /* reconnect.c: resuming a parked session */
    if (rs) { /* the new worker has neither the region nor the data connections of the old one */
        fgc_shm_detach();
        fgc_bulk_forget_lanes();
    }
    /* Shared memory is offered on a fresh session only (a resumed one goes on over the socket). */
    uint64_t shm = !attach && !rs && is_unix(g_endpoint) ? fgc_shm_offer_bytes() : 0;
    fg_mp_map(&w, 7 + (attach ? 2 : 0) + (attach == 2) + (rs ? 3 : 0) + (shm > 0));
    fg_mp_str(&w, "proto");
    fg_mp_int(&w, FG_PROTO_VERSION);
    fg_mp_str(&w, "token");
    fg_mp_str(&w, g_token);
    fg_mp_str(&w, "ops_hash");
    fg_mp_str(&w, FG_OPS_HASH);
    fg_mp_str(&w, "pid");
    fg_mp_int(&w, getpid());
    fg_mp_str(&w, "host");
    fg_mp_str(&w, host);
    fg_mp_str(&w, "exe");
    fg_mp_str(&w, exe);
    fg_mp_str(&w, "stub");
    fg_mp_str(&w, "fargpu-stub 0.1.0");
    if (rs) {
        fg_mp_str(&w, "resume_session");
        fg_mp_str(&w, g_fgc.session);
        fg_mp_str(&w, "resume_key");
        fg_mp_str(&w, rs);
        fg_mp_str(&w, "resume_have"); /* a live worker sends its reply again when the client never read it */
        fg_mp_int(&w, fgc_resume_have());
    }
    if (attach) {
        fg_mp_str(&w, "attach_session");
        fg_mp_str(&w, g_fgc.session);
        fg_mp_str(&w, "attach_key");
        fg_mp_str(&w, g_attach_key);
    }
    if (attach == 2) {
        fg_mp_str(&w, "data");
        fg_mp_int(&w, 1);
    }
    if (shm) {
        fg_mp_str(&w, "shm");
        fg_mp_int(&w, (int64_t)shm);
    }
    fg_header h = {FG_MAGIC, FG_T_HELLO, 0, (uint32_t)w.len, 0};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    int bad = w.failed || fg_io_full(fd, hb, sizeof hb, 1) || fg_io_full(fd, w.buf, w.len, 1);
    fg_writer_free(&w);
    return bad ? -1 : 0;
}

/* For reconnect.c: dial, and send the session's HELLO (with the resume fields while it resumes). */
int fgc_dial(const char *ep, char *err, size_t errlen) { return dial(ep, err, errlen); }
int fgc_send_hello(int fd) { return send_hello(fd, 0); }
void fgc_set_attach_key(const char *key) { snprintf(g_attach_key, sizeof g_attach_key, "%s", key); }
void fgc_set_endpoint(const char *ep, const char *token) {
    snprintf(g_endpoint, sizeof g_endpoint, "%s", ep);
    if (token) snprintf(g_token, sizeof g_token, "%s", token);
}

/* A second connection to the session (kind 1 callback, 2 data), authenticated with its attach key. */
static int open_channel(int kind) {
    if (!g_attach_key[0] || !g_fgc.session[0]) return -1; /* a server without callback connections */
    char err[256] = "";
    int fd = dial(g_endpoint, err, sizeof err);
    if (fd < 0) return -1;
    uint8_t hb[FG_HEADER_SIZE];
    fg_header h;
    uint8_t buf[FG_MAX_HELLO];
    int to = fg_io_timeout_ms();
    if (send_hello(fd, kind) || fg_io_read_deadline(fd, hb, sizeof hb, to, to, NULL) ||
        fg_header_decode(hb, &h, FG_MAX_HELLO) || h.length > sizeof buf ||
        fg_io_read_deadline(fd, buf, h.length, to, to, NULL) || h.type != FG_T_HELLO_OK) {
        close(fd);
        return -1;
    }
    if (kind == 2) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    }
    return fd;
}

int fgc_open_callback_channel(void) {
    int fd = open_channel(1);
    if (fd < 0)
        fgc_log(FGC_LOG_WARN, "the node server refused the callback connection; host functions will wait for "
                              "their stream on the submitting thread");
    return fd;
}

int fgc_open_data_channel(void) { return open_channel(2); }

static pid_t g_conn_pid; /* the process that connected (a forked child's exit must not end the session) */

/* At exit the stub says goodbye (a CLOSE, client to server), so a worker that waits for a client whose connection
 * dropped (FARGPU_WORKER_LINGER_S, server/replay/reattach.c) ends the session at once instead. Skipped when
 * another thread is writing (the worker then sees the connection end, and waits). */
__attribute__((destructor)) static void say_goodbye(void) {
    if (g_fgc.fd < 0 || g_fgc.broken || getpid() != g_conn_pid || pthread_mutex_trylock(&g_fgc.wmu)) return;
    if (g_fgc.fd >= 0) {
        fg_header h = {FG_MAGIC, FG_T_CLOSE, 0, 0, 0};
        uint8_t hb[FG_HEADER_SIZE];
        fg_header_encode(&h, hb);
        ssize_t w = send(g_fgc.fd, hb, sizeof hb, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    pthread_mutex_unlock(&g_fgc.wmu);
}

CUresult fgc_connect(void) {
    const char *ep = getenv("FARGPU_SERVER");
    const char *token = getenv("FARGPU_TOKEN");
    static char leased_ep[512], leased_token[512];
    const char *pool = getenv("FARGPU_POOL_URL");
    if ((!ep || !*ep) && pool && *pool) {
        if (fgc_lease_from_pool(pool, leased_ep, sizeof leased_ep, leased_token, sizeof leased_token))
            return CUDA_ERROR_NO_DEVICE;
        ep = leased_ep;
        token = leased_token;
    }
    if (!ep || !*ep) {
        fgc_log(FGC_LOG_ERROR, "FARGPU_SERVER is not set: set it to the node server's host:port or unix socket "
                               "path (or run the program with `fargpu run -- ...`)");
        return CUDA_ERROR_NO_DEVICE;
    }
    snprintf(g_endpoint, sizeof g_endpoint, "%s", ep);
    snprintf(g_token, sizeof g_token, "%s", token ? token : "");
    char err[256] = "";
    int fd = dial(ep, err, sizeof err);
    if (fd < 0) {
        fgc_log(FGC_LOG_ERROR, "cannot reach the fargpu node server at %s: %s. Is the server running "
                               "(`fargpu server`), and is FARGPU_SERVER right?", ep, err);
        return CUDA_ERROR_NO_DEVICE;
    }
    g_fgc.fd = fd;
    g_conn_pid = getpid();

    int bad = send_hello(fd, 0);
    uint8_t buf[FG_MAX_HELLO];
    size_t n = 0;
    int type = bad ? -1 : recv_small_frame(buf, sizeof buf, &n);
    if (type == FG_T_HELLO_OK) {
        fg_mp_value v;
        if (fg_mp_lookup(buf, n, "max_frame", &v) == 0 && v.type == 2 && v.i > 0) g_fgc.max_frame = (uint32_t)v.i;
        char backend[64];
        mp_copy_str(buf, n, "backend", backend, sizeof backend);
        mp_copy_str(buf, n, "session", g_fgc.session, sizeof g_fgc.session);
        mp_copy_str(buf, n, "attach_key", g_attach_key, sizeof g_attach_key);
        mp_copy_str(buf, n, "driver_version", g_driver_version, sizeof g_driver_version);
        mp_copy_str(buf, n, "resume_key", fgc_resume_key_buf(), FGC_RESUME_KEY_CAP);
        fgc_log(FGC_LOG_INFO, "connected to %s (session %s, backend %s)", ep, g_fgc.session, backend);
        if (fg_mp_lookup(buf, n, "shm", &v) == 0 && fgc_shm_handshake(fd)) {
            fgc_log(FGC_LOG_ERROR, "the shared-memory step of the handshake with %s failed", ep);
            close(fd);
            g_fgc.fd = -1;
            return CUDA_ERROR_NO_DEVICE;
        }
        return CUDA_SUCCESS;
    }
    char reason[512] = "the connection closed during the handshake";
    if (type == FG_T_HELLO_ERR || type == FG_T_CLOSE) mp_copy_str(buf, n, "reason", reason, sizeof reason);
    fgc_log(FGC_LOG_ERROR, "the fargpu node server at %s refused the session: %s", ep, reason);
    close(fd);
    g_fgc.fd = -1;
    return type == FG_T_HELLO_ERR ? CUDA_ERROR_NOT_PERMITTED : CUDA_ERROR_NO_DEVICE;
}
