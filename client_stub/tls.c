/* tls.c — the stub's TLS (see fgc_tls.h): OpenSSL 3 loaded at run time, a verified client handshake, and a relay
 * thread per connection between the TLS session and the socketpair end the rest of the stub uses.
 *
 * The relay is one thread per connection with both descriptors non-blocking and one poll: OpenSSL objects must not
 * be used from two threads at once, and one loop cannot deadlock on a full socket in either direction. When either
 * side ends, what is buffered toward the other side is delivered first, then both close (a TLS close_notify is
 * sent when the stub closed its end). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgc_rpc.h"
#include "fgc_tls.h"

/* OpenSSL's ABI, declared here so that no OpenSSL headers are needed to build the stub. */
typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct x509_vp_st X509_VERIFY_PARAM;
enum { E_SSL = 1, E_WANT_READ = 2, E_WANT_WRITE = 3, E_SYSCALL = 5, E_ZERO_RETURN = 6 };
enum { CTRL_MODE = 33, CTRL_SET_TLSEXT_HOSTNAME = 55, CTRL_SET_MIN_PROTO = 123, TLS1_2 = 0x0303 };
enum { MODE_PARTIAL_WRITE = 1, MODE_MOVING_BUFFER = 2, VERIFY_PEER = 1 };

static struct {
    const SSL_METHOD *(*client_method)(void);
    SSL_CTX *(*ctx_new)(const SSL_METHOD *);
    long (*ctx_ctrl)(SSL_CTX *, int, long, void *);
    void (*ctx_set_verify)(SSL_CTX *, int, void *);
    int (*ctx_load_verify)(SSL_CTX *, const char *, const char *);
    int (*ctx_default_paths)(SSL_CTX *);
    SSL *(*new_)(SSL_CTX *);
    void (*free_)(SSL *);
    int (*set_fd)(SSL *, int);
    long (*ctrl)(SSL *, int, long, void *);
    int (*set1_host)(SSL *, const char *);
    X509_VERIFY_PARAM *(*get0_param)(SSL *);
    int (*param_set1_ip_asc)(X509_VERIFY_PARAM *, const char *);
    int (*connect)(SSL *);
    int (*read)(SSL *, void *, int);
    int (*write)(SSL *, const void *, int);
    int (*get_error)(const SSL *, int);
    int (*shutdown)(SSL *);
    long (*get_verify_result)(const SSL *);
    const char *(*verify_string)(long);
    unsigned long (*err_get)(void);
    void (*err_string)(unsigned long, char *, size_t);
    void (*err_clear)(void);
} o;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static SSL_CTX *g_ctx;
static char g_load_err[512];
static char g_ca[1024];

int fgc_tls_endpoint(const char *ep, const char **hostport) {
    if (!ep || strncmp(ep, "tls://", 6) != 0) return 0;
    if (hostport) *hostport = ep + 6;
    return 1;
}

static void *sym(void *h, const char *name, int *missing) {
    void *p = dlsym(h, name);
    if (!p && !*missing) {
        *missing = 1;
        snprintf(g_load_err, sizeof g_load_err, "the system's OpenSSL lacks %s (OpenSSL 3 is needed)", name);
    }
    return p;
}

/* The CA file: FARGPU_TLS_CA, else the development CA of this machine if it exists, else "" (system CAs). */
static void find_ca(void) {
    const char *env = getenv("FARGPU_TLS_CA");
    if (env && *env) {
        snprintf(g_ca, sizeof g_ca, "%s", env);
        return;
    }
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (state && *state) snprintf(g_ca, sizeof g_ca, "%s/fargpu/tls/ca.pem", state);
    else snprintf(g_ca, sizeof g_ca, "%s/.local/state/fargpu/tls/ca.pem", home ? home : "");
    if (access(g_ca, R_OK) != 0) g_ca[0] = 0;
}

static void load(void) {
    void *h = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(g_load_err, sizeof g_load_err, "TLS needs the system's OpenSSL 3 (libssl.so.3), which cannot be "
                                                "loaded: install libssl3");
        return;
    }
    int m = 0;
#define S(field, name) *(void **)&o.field = sym(h, name, &m)
    S(client_method, "TLS_client_method");
    S(ctx_new, "SSL_CTX_new");
    S(ctx_ctrl, "SSL_CTX_ctrl");
    S(ctx_set_verify, "SSL_CTX_set_verify");
    S(ctx_load_verify, "SSL_CTX_load_verify_locations");
    S(ctx_default_paths, "SSL_CTX_set_default_verify_paths");
    S(new_, "SSL_new");
    S(free_, "SSL_free");
    S(set_fd, "SSL_set_fd");
    S(ctrl, "SSL_ctrl");
    S(set1_host, "SSL_set1_host");
    S(get0_param, "SSL_get0_param");
    S(param_set1_ip_asc, "X509_VERIFY_PARAM_set1_ip_asc");
    S(connect, "SSL_connect");
    S(read, "SSL_read");
    S(write, "SSL_write");
    S(get_error, "SSL_get_error");
    S(shutdown, "SSL_shutdown");
    S(get_verify_result, "SSL_get_verify_result");
    S(verify_string, "X509_verify_cert_error_string");
    S(err_get, "ERR_get_error");
    S(err_string, "ERR_error_string_n");
    S(err_clear, "ERR_clear_error");
#undef S
    if (m) return;
    SSL_CTX *ctx = o.ctx_new(o.client_method());
    if (!ctx) {
        snprintf(g_load_err, sizeof g_load_err, "OpenSSL could not make a TLS context");
        return;
    }
    o.ctx_ctrl(ctx, CTRL_SET_MIN_PROTO, TLS1_2, NULL);
    o.ctx_ctrl(ctx, CTRL_MODE, MODE_PARTIAL_WRITE | MODE_MOVING_BUFFER, NULL);
    o.ctx_set_verify(ctx, VERIFY_PEER, NULL);
    find_ca();
    if (g_ca[0] ? o.ctx_load_verify(ctx, g_ca, NULL) != 1 : o.ctx_default_paths(ctx) != 1) {
        snprintf(g_load_err, sizeof g_load_err, "cannot load the CA file %s: set FARGPU_TLS_CA to the pool's ca.pem",
                 g_ca[0] ? g_ca : "(system CAs)");
        return;
    }
    g_ctx = ctx;
}

static void ssl_reason(char *out, size_t cap) {
    unsigned long e = o.err_get ? o.err_get() : 0;
    if (e) o.err_string(e, out, cap);
    else snprintf(out, cap, "%s", errno ? strerror(errno) : "the connection closed");
    if (o.err_clear) o.err_clear();
}

static int ms_left(const struct timespec *end) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (end->tv_sec - now.tv_sec) * 1000 + (end->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : (int)ms;
}

typedef struct {
    SSL *ssl;
    int net, plain;
} relay_t;

enum { UP_CAP = 256 * 1024, DOWN_CAP = 64 * 1024 };

static void *relay_main(void *arg) {
    relay_t *r = arg;
    char *up = malloc(UP_CAP), *down = malloc(DOWN_CAP);
    size_t up_off = 0, up_len = 0, down_off = 0, down_len = 0;
    int net_eof = 0, plain_eof = 0, dead = !up || !down;
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL); /* a peer gone mid-write is EPIPE here, never SIGPIPE for the app */
    while (!dead) {
        int progress = 0;
        short net_ev = 0, plain_ev = 0;
        /* network -> the stub */
        if (!net_eof && down_len == 0) {
            int n = o.read(r->ssl, down, DOWN_CAP);
            if (n > 0) {
                down_len = (size_t)n;
                down_off = 0;
                progress = 1;
            } else {
                int e = o.get_error(r->ssl, n);
                if (e == E_WANT_READ) net_ev |= POLLIN;
                else if (e == E_WANT_WRITE) net_ev |= POLLOUT;
                else net_eof = 1; /* close_notify, reset or a TLS error: the session is over */
                if (e != E_WANT_READ && e != E_WANT_WRITE && o.err_clear) o.err_clear();
            }
        }
        if (down_off < down_len) {
            ssize_t w = send(r->plain, down + down_off, down_len - down_off, MSG_NOSIGNAL);
            if (w > 0) {
                down_off += (size_t)w;
                progress = 1;
            } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) plain_ev |= POLLOUT;
            else dead = 1;
            if (down_off == down_len) down_off = down_len = 0;
        }
        /* the stub -> network */
        if (!plain_eof && up_len == 0) {
            ssize_t n = recv(r->plain, up, UP_CAP, 0);
            if (n > 0) {
                up_len = (size_t)n;
                up_off = 0;
                progress = 1;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) plain_ev |= POLLIN;
            else plain_eof = 1;
        }
        if (up_off < up_len) {
            size_t chunk = up_len - up_off;
            int n = o.write(r->ssl, up + up_off, chunk > (1u << 30) ? (int)(1u << 30) : (int)chunk);
            if (n > 0) {
                up_off += (size_t)n;
                progress = 1;
                if (up_off == up_len) up_off = up_len = 0;
            } else {
                int e = o.get_error(r->ssl, n);
                if (e == E_WANT_WRITE) net_ev |= POLLOUT;
                else if (e == E_WANT_READ) net_ev |= POLLIN;
                else dead = 1;
            }
        }
        if (net_eof && down_len == 0) break;   /* all the server sent is delivered */
        if (plain_eof && up_len == 0) {        /* the stub closed, all it sent is out: say goodbye */
            o.shutdown(r->ssl);
            break;
        }
        if (progress || dead) continue;
        /* a side with nothing to wait for is left out (else its hang-up would wake this loop without end) */
        struct pollfd p[2] = {{.fd = net_ev ? r->net : -1, .events = net_ev},
                              {.fd = plain_ev ? r->plain : -1, .events = plain_ev}};
        if (poll(p, 2, -1) < 0 && errno != EINTR) dead = 1;
    }
    free(up);
    free(down);
    o.free_(r->ssl);
    close(r->net);
    close(r->plain);
    free(r);
    return NULL;
}

/* The client handshake on the non-blocking fd within the I/O timeout: 1, or 0 with the reason in err. */
static int handshake(SSL *ssl, int fd, const char *host, char *err, size_t errlen) {
    int to = fg_io_timeout_ms();
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (to < 0 ? 30000 : to) / 1000;
    for (;;) {
        int rc = o.connect(ssl);
        if (rc == 1) return 1;
        int e = o.get_error(ssl, rc);
        int left = ms_left(&end);
        if ((e == E_WANT_READ || e == E_WANT_WRITE) && left > 0) {
            struct pollfd p = {.fd = fd, .events = e == E_WANT_READ ? POLLIN : POLLOUT};
            if (poll(&p, 1, left) >= 0 || errno == EINTR) continue;
        }
        long v = o.get_verify_result(ssl);
        if (v != 0) {
            snprintf(err, errlen, "the certificate of %s is not trusted (%s): set FARGPU_TLS_CA to the pool's ca.pem",
                     host, o.verify_string(v));
        } else if (left <= 0) {
            snprintf(err, errlen, "no TLS handshake with %s within %d ms", host, to < 0 ? 30000 : to);
        } else {
            char r[200];
            ssl_reason(r, sizeof r);
            if (strstr(r, "wrong version number") || strstr(r, "packet length too long") || strstr(r, "record layer"))
                snprintf(err, errlen, "%s does not speak TLS (%s): use its plain endpoint host:port", host, r);
            else snprintf(err, errlen, "TLS handshake with %s failed: %s", host, r);
        }
        return 0;
    }
}

int fgc_tls_wrap(int fd, const char *host_in, char *err, size_t errlen) {
    pthread_once(&g_once, load);
    if (!g_ctx) {
        snprintf(err, errlen, "%s", g_load_err);
        close(fd);
        return -1;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", host_in[0] == '[' ? host_in + 1 : host_in);
    char *cut = host_in[0] == '[' ? strchr(host, ']') : strrchr(host, ':');
    if (cut && (host_in[0] == '[' || strchr(host, ':') == cut)) *cut = 0; /* drop ":port" (not a bare v6 address) */
    SSL *ssl = o.new_(g_ctx);
    if (!ssl || o.set_fd(ssl, fd) != 1) {
        snprintf(err, errlen, "OpenSSL could not start a TLS session");
        if (ssl) o.free_(ssl);
        close(fd);
        return -1;
    }
    int is_ip = strchr(host, ':') != NULL || strspn(host, "0123456789.") == strlen(host);
    if (is_ip) o.param_set1_ip_asc(o.get0_param(ssl), host);
    else {
        o.set1_host(ssl, host);
        o.ctrl(ssl, CTRL_SET_TLSEXT_HOSTNAME, 0, host);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    sigset_t pipe, old;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old); /* OpenSSL writes with write(): a reset peer must not kill the app */
    int ok = handshake(ssl, fd, host, err, errlen);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe, NULL, &zero) > 0) {} /* drop a SIGPIPE the handshake raised, if any */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!ok) {
        o.free_(ssl);
        close(fd);
        return -1;
    }
    int sp[2];
    relay_t *r = malloc(sizeof *r);
    if (!r || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
        snprintf(err, errlen, "cannot make the TLS relay: %s", strerror(errno));
        free(r);
        o.free_(ssl);
        close(fd);
        return -1;
    }
    fcntl(sp[1], F_SETFL, fcntl(sp[1], F_GETFL) | O_NONBLOCK);
    *r = (relay_t){.ssl = ssl, .net = fd, .plain = sp[1]};
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int bad = pthread_create(&th, &at, relay_main, r);
    pthread_attr_destroy(&at);
    if (bad) {
        snprintf(err, errlen, "cannot start the TLS relay thread: %s", strerror(bad));
        close(sp[0]);
        close(sp[1]);
        o.free_(ssl);
        close(fd);
        free(r);
        return -1;
    }
    fgc_log(FGC_LOG_INFO, "TLS to %s established (CA %s)", host, g_ca[0] ? g_ca : "of the system");
    return sp[0];
}
