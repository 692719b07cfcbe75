/* fg_tls.c — see fg_tls.h. OpenSSL's ABI is declared here (opaque types, the few constants used), so building needs
 * no OpenSSL headers and running needs libssl.so.3 only where TLS is used.
 *
 * The relay is one thread per connection with both descriptors non-blocking and one poll: OpenSSL objects must not
 * be used from two threads at once, and one loop cannot deadlock on a full socket in either direction. */
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

#include "fg_tls.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct x509_vp_st X509_VERIFY_PARAM;
enum { E_SSL = 1, E_WANT_READ = 2, E_WANT_WRITE = 3, E_SYSCALL = 5, E_ZERO_RETURN = 6 };
enum { CTRL_MODE = 33, CTRL_SET_TLSEXT_HOSTNAME = 55, CTRL_SET_MIN_PROTO = 123, TLS1_2 = 0x0303 };
enum { MODE_PARTIAL_WRITE = 1, MODE_MOVING_BUFFER = 2, VERIFY_PEER = 1, FILETYPE_PEM = 1 };

static struct {
    const SSL_METHOD *(*client_method)(void);
    const SSL_METHOD *(*server_method)(void);
    SSL_CTX *(*ctx_new)(const SSL_METHOD *);
    long (*ctx_ctrl)(SSL_CTX *, int, long, void *);
    void (*ctx_set_verify)(SSL_CTX *, int, void *);
    int (*ctx_load_verify)(SSL_CTX *, const char *, const char *);
    int (*ctx_default_paths)(SSL_CTX *);
    int (*ctx_use_chain)(SSL_CTX *, const char *);
    int (*ctx_use_key)(SSL_CTX *, const char *, int);
    int (*ctx_check_key)(const SSL_CTX *);
    SSL *(*new_)(SSL_CTX *);
    void (*free_)(SSL *);
    int (*set_fd)(SSL *, int);
    long (*ctrl)(SSL *, int, long, void *);
    int (*set1_host)(SSL *, const char *);
    X509_VERIFY_PARAM *(*get0_param)(SSL *);
    int (*param_set1_ip_asc)(X509_VERIFY_PARAM *, const char *);
    int (*connect)(SSL *);
    int (*accept)(SSL *);
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
static char g_load_err[256];
static int g_loaded;

static void *sym(void *h, const char *name, int *missing) {
    void *p = dlsym(h, name);
    if (!p && !*missing) {
        *missing = 1;
        snprintf(g_load_err, sizeof g_load_err, "the system's OpenSSL lacks %s (OpenSSL 3 is needed)", name);
    }
    return p;
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
    S(server_method, "TLS_server_method");
    S(ctx_new, "SSL_CTX_new");
    S(ctx_ctrl, "SSL_CTX_ctrl");
    S(ctx_set_verify, "SSL_CTX_set_verify");
    S(ctx_load_verify, "SSL_CTX_load_verify_locations");
    S(ctx_default_paths, "SSL_CTX_set_default_verify_paths");
    S(ctx_use_chain, "SSL_CTX_use_certificate_chain_file");
    S(ctx_use_key, "SSL_CTX_use_PrivateKey_file");
    S(ctx_check_key, "SSL_CTX_check_private_key");
    S(new_, "SSL_new");
    S(free_, "SSL_free");
    S(set_fd, "SSL_set_fd");
    S(ctrl, "SSL_ctrl");
    S(set1_host, "SSL_set1_host");
    S(get0_param, "SSL_get0_param");
    S(param_set1_ip_asc, "X509_VERIFY_PARAM_set1_ip_asc");
    S(connect, "SSL_connect");
    S(accept, "SSL_accept");
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
    g_loaded = !m;
}

static void ssl_reason(char *out, size_t cap) {
    unsigned long e = o.err_get();
    if (e) o.err_string(e, out, cap);
    else snprintf(out, cap, "%s", errno ? strerror(errno) : "the connection closed");
    o.err_clear();
}

static SSL_CTX *new_ctx(int server, char *err, size_t errlen) {
    pthread_once(&g_once, load);
    if (!g_loaded) {
        snprintf(err, errlen, "%s", g_load_err);
        return NULL;
    }
    SSL_CTX *ctx = o.ctx_new(server ? o.server_method() : o.client_method());
    if (!ctx) {
        snprintf(err, errlen, "OpenSSL could not make a TLS context");
        return NULL;
    }
    o.ctx_ctrl(ctx, CTRL_SET_MIN_PROTO, TLS1_2, NULL);
    o.ctx_ctrl(ctx, CTRL_MODE, MODE_PARTIAL_WRITE | MODE_MOVING_BUFFER, NULL);
    return ctx;
}

void *fg_tls_client_ctx(const char *ca_file, char *err, size_t errlen) {
    SSL_CTX *ctx = new_ctx(0, err, errlen);
    if (!ctx) return NULL;
    o.ctx_set_verify(ctx, VERIFY_PEER, NULL);
    int ok = ca_file && *ca_file ? o.ctx_load_verify(ctx, ca_file, NULL) : o.ctx_default_paths(ctx);
    if (ok != 1) {
        snprintf(err, errlen, "cannot load the CA file %s: set FARGPU_TLS_CA to the pool's ca.pem",
                 ca_file && *ca_file ? ca_file : "(system CAs)");
        o.err_clear();
        return NULL; /* (the context is kept: a client makes one per process) */
    }
    return ctx;
}

void *fg_tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen) {
    SSL_CTX *ctx = new_ctx(1, err, errlen);
    if (!ctx) return NULL;
    if (o.ctx_use_chain(ctx, cert_file) != 1 || o.ctx_use_key(ctx, key_file, FILETYPE_PEM) != 1 ||
        o.ctx_check_key(ctx) != 1) {
        char r[200];
        ssl_reason(r, sizeof r);
        snprintf(err, errlen, "cannot use the certificate %s with the key %s: %s", cert_file, key_file, r);
        return NULL;
    }
    return ctx;
}

static int ms_left(const struct timespec *end) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (end->tv_sec - now.tv_sec) * 1000 + (end->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : (int)ms;
}

void *fg_tls_handshake(void *ctx, int fd, const char *host, int server, int timeout_ms, char *err, size_t errlen) {
    SSL *ssl = o.new_(ctx);
    if (!ssl || o.set_fd(ssl, fd) != 1) {
        snprintf(err, errlen, "OpenSSL could not start a TLS session");
        if (ssl) o.free_(ssl);
        return NULL;
    }
    if (!server && host) {
        int is_ip = strchr(host, ':') != NULL || strspn(host, "0123456789.") == strlen(host);
        if (is_ip) o.param_set1_ip_asc(o.get0_param(ssl), host);
        else {
            o.set1_host(ssl, host);
            o.ctrl(ssl, CTRL_SET_TLSEXT_HOSTNAME, 0, (void *)host);
        }
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    sigset_t pipe, old;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old); /* OpenSSL writes with write(): a reset peer must not kill the process */
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += timeout_ms / 1000;
    end.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    int done = 0;
    for (;;) {
        int rc = server ? o.accept(ssl) : o.connect(ssl);
        if (rc == 1) {
            done = 1;
            break;
        }
        int e = o.get_error(ssl, rc);
        int left = ms_left(&end);
        if ((e == E_WANT_READ || e == E_WANT_WRITE) && left > 0) {
            struct pollfd p = {.fd = fd, .events = e == E_WANT_READ ? POLLIN : POLLOUT};
            if (poll(&p, 1, left) >= 0 || errno == EINTR) continue;
        }
        long v = server ? 0 : o.get_verify_result(ssl);
        if (v != 0) {
            snprintf(err, errlen, "the certificate of %s is not trusted (%s): set FARGPU_TLS_CA to the pool's ca.pem",
                     host, o.verify_string(v));
        } else if (left <= 0) {
            snprintf(err, errlen, "no TLS handshake within %d ms", timeout_ms);
        } else {
            char r[200];
            ssl_reason(r, sizeof r);
            if (!server && (strstr(r, "wrong version number") || strstr(r, "packet length too long") ||
                            strstr(r, "record layer")))
                snprintf(err, errlen, "%s does not speak TLS (%s): use its plain endpoint host:port", host, r);
            else snprintf(err, errlen, "TLS handshake failed: %s", r);
        }
        break;
    }
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe, NULL, &zero) > 0) {} /* drop a SIGPIPE the handshake raised, if any */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!done) {
        o.err_clear();
        o.free_(ssl);
        return NULL;
    }
    return ssl;
}

enum { UP_CAP = 256 * 1024, DOWN_CAP = 256 * 1024 };

void fg_tls_relay(void *ssl_, int net, int plain) {
    struct { SSL *ssl; int net, plain; } rr = {ssl_, net, plain}, *r = &rr;
    fcntl(net, F_SETFL, fcntl(net, F_GETFL) | O_NONBLOCK);
    fcntl(plain, F_SETFL, fcntl(plain, F_GETFL) | O_NONBLOCK);
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
        while (!net_eof && down_off == 0 && down_len < DOWN_CAP) { /* records until the buffer is full */
            int n = o.read(r->ssl, down + down_len, (int)(DOWN_CAP - down_len));
            if (n > 0) {
                down_len += (size_t)n;
                progress = 1;
            } else {
                int e = o.get_error(r->ssl, n);
                if (e == E_WANT_READ) net_ev |= POLLIN;
                else if (e == E_WANT_WRITE) net_ev |= POLLOUT;
                else net_eof = 1; /* close_notify, reset or a TLS error: the session is over */
                if (e != E_WANT_READ && e != E_WANT_WRITE) o.err_clear();
                break;
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
}

int fg_tls_serve(void *ctx, int net, int plain, int timeout_ms, char *err, size_t errlen) {
    void *ssl = fg_tls_handshake(ctx, net, NULL, 1, timeout_ms, err, errlen);
    if (!ssl) {
        close(net);
        close(plain);
        return -1;
    }
    fg_tls_relay(ssl, net, plain);
    return 0;
}
