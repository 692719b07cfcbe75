/* tls.c — the stub's TLS (see fgc_tls.h): the client context (the CA it verifies with), a verified handshake, and
 * a relay thread per connection between the TLS session and the socketpair end the rest of the stub uses. The
 * OpenSSL loader, handshake and relay are protocol/c/fg_tls.c, shared with the node agent. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fg_io.h"
#include "fg_tls.h"
#include "fgc_rpc.h"
#include "fgc_tls.h"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void *g_ctx;
static char g_load_err[512];
static char g_ca[1024];

int fgc_tls_endpoint(const char *ep, const char **hostport) {
    if (!ep || strncmp(ep, "tls://", 6) != 0) return 0;
    if (hostport) *hostport = ep + 6;
    return 1;
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

static void init(void) {
    find_ca();
    g_ctx = fg_tls_client_ctx(g_ca, g_load_err, sizeof g_load_err);
}

typedef struct {
    void *ssl;
    int net, plain;
} relay_args;

static void *relay_main(void *arg) {
    relay_args a = *(relay_args *)arg;
    free(arg);
    fg_tls_relay(a.ssl, a.net, a.plain);
    return NULL;
}

int fgc_tls_wrap(int fd, const char *host_in, char *err, size_t errlen) {
    pthread_once(&g_once, init);
    if (!g_ctx) {
        snprintf(err, errlen, "%s", g_load_err);
        close(fd);
        return -1;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", host_in[0] == '[' ? host_in + 1 : host_in);
    char *cut = host_in[0] == '[' ? strchr(host, ']') : strrchr(host, ':');
    if (cut && (host_in[0] == '[' || strchr(host, ':') == cut)) *cut = 0; /* drop ":port" (not a bare v6 address) */
    int to = fg_io_timeout_ms();
    void *ssl = fg_tls_handshake(g_ctx, fd, host, 0, to < 0 ? 30000 : to, err, errlen);
    if (!ssl) {
        close(fd);
        return -1;
    }
    int sp[2];
    relay_args *args = malloc(sizeof *args);
    if (!args || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
        snprintf(err, errlen, "cannot make the TLS relay: %s", strerror(errno));
        free(args);
        fg_tls_relay(ssl, fd, -1); /* nothing to relay: frees the session and closes fd */
        return -1;
    }
    *args = (relay_args){.ssl = ssl, .net = fd, .plain = sp[1]};
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int bad = pthread_create(&th, &at, relay_main, args);
    pthread_attr_destroy(&at);
    if (bad) {
        snprintf(err, errlen, "cannot start the TLS relay thread: %s", strerror(bad));
        free(args);
        close(sp[0]);
        fg_tls_relay(ssl, fd, sp[1]); /* its peer is closed: frees the session, closes both */
        return -1;
    }
    fgc_log(FGC_LOG_INFO, "TLS to %s established (CA %s)", host, g_ca[0] ? g_ca : "of the system");
    return sp[0];
}
