/* lease.c — the stub leases for itself when FARGPU_POOL_URL is set and FARGPU_SERVER is not: it asks the
 * pool manager (plain HTTP/1.1 on loopback or a private network) for a lease of FARGPU_VRAM (default 1G) and
 * FARGPU_LEASE_TTL seconds (default 60),
 * connects to the endpoint it returns with the lease token, renews the lease from a background thread and
 * releases it when the process exits. `fargpu run` does the same from Python and is the usual way.
 *
 * Every request carries the API key, found as `fargpu run` finds it (pool_manager/tenants.py): FARGPU_API_KEY,
 * else $XDG_CONFIG_HOME/fargpu/api-key (~/.config/...), else this machine's local key
 * $XDG_STATE_HOME/fargpu/api-key (~/.local/state/...); a key file is used only when it is this user's and
 * nobody else can read it. The lease is asked for with end_with_sessions, so the pool ends it when its last
 * session ends (a killed process included), not at the TTL. Before using a lease the stub checks that its node
 * accepts a connection; one that does not is avoided and the lease is taken again elsewhere (up to 4 times).
 * Neither key nor token is ever logged. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "fgc_internal.h"
#include "fgc_lease.h"
#include "fgc_reconnect.h"
#include "fgc_tls.h"

static char g_host[256], g_port[16], g_lease[128], g_token[512], g_key[256];
static double g_ttl = 60;

/* The key in `path` if the file is this user's, unreadable by others, and holds one line of key characters. */
static int read_key_file(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    char buf[256];
    ssize_t n = -1;
    if (fstat(fd, &st) == 0 && st.st_uid == getuid() && (st.st_mode & 077) == 0) n = read(fd, buf, sizeof buf - 1);
    else fgc_log(FGC_LOG_WARN, "not using the API key file %s: other users can read it (chmod 600 it)", path);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    buf[strcspn(buf, "\r\n \t")] = 0;
    for (const char *c = buf; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
              *c == '-'))
            return -1;
    if (!buf[0]) return -1;
    snprintf(g_key, sizeof g_key, "%s", buf);
    return 0;
}

static void find_api_key(void) {
    const char *env = getenv("FARGPU_API_KEY");
    if (env && *env && strlen(env) < sizeof g_key && !strpbrk(env, "\r\n")) {
        snprintf(g_key, sizeof g_key, "%s", env);
        return;
    }
    const char *home = getenv("HOME");
    const char *cfg = getenv("XDG_CONFIG_HOME"), *state = getenv("XDG_STATE_HOME");
    char path[1024];
    if (cfg && *cfg) snprintf(path, sizeof path, "%s/fargpu/api-key", cfg);
    else snprintf(path, sizeof path, "%s/.config/fargpu/api-key", home ? home : "");
    if (read_key_file(path) == 0) return;
    if (state && *state) snprintf(path, sizeof path, "%s/fargpu/api-key", state);
    else snprintf(path, sizeof path, "%s/.local/state/fargpu/api-key", home ? home : "");
    if (read_key_file(path) == 0) return;
    g_key[0] = 0;
}

/* 0 when `ep` (host:port or a socket path) accepts a connection within a second. */
static int g_https; /* the pool's URL is https:// */

static int probe(const char *ep) {
    fgc_tls_endpoint(ep, &ep); /* tls://host:port: the TCP part answers */
    if (ep[0] == '/') {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(ep) >= sizeof a.sun_path) return -1;
        memcpy(a.sun_path, ep, strlen(ep) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int bad = fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0;
        if (fd >= 0) close(fd);
        return bad ? -1 : 0;
    }
    char host[256], port[16];
    const char *colon = strrchr(ep, ':');
    if (!colon || (size_t)(colon - ep) >= sizeof host) return -1;
    memcpy(host, ep, (size_t)(colon - ep));
    host[colon - ep] = 0;
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int ok = -1;
    if (fd >= 0) {
        int r = connect(fd, res->ai_addr, res->ai_addrlen);
        if (r == 0) ok = 0;
        else if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t el = sizeof err;
            if (poll(&p, 1, 1000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) ok = 0;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return ok;
}

static int http(const char *method, const char *path, const char *body, char *resp, size_t cap) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(g_host, g_port, &hints, &res) != 0) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    if (g_https) { /* an https:// pool: through TLS (tls.c), verified against the pool's CA */
        char err[300];
        if ((fd = fgc_tls_wrap(fd, g_host, err, sizeof err)) < 0) {
            fgc_log(FGC_LOG_ERROR, "the pool manager at %s:%s: %s", g_host, g_port, err);
            return -1;
        }
    }
    /* The API key; without one, the lease token (which only POST /v1/leases/ID/resume accepts). */
    const char *auth = g_key[0] ? g_key : g_token;
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "%s%s%sContent-Length: %zu\r\n\r\n%s",
                     method, path, g_host, g_port, auth[0] ? "Authorization: Bearer " : "", auth,
                     auth[0] ? "\r\n" : "", strlen(body), body);
    if (n <= 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t k;
    while (got < cap - 1 && (k = read(fd, resp + got, cap - 1 - got)) > 0) got += (size_t)k;
    resp[got] = 0;
    close(fd);
    int status = 0;
    return sscanf(resp, "HTTP/1.%*d %d", &status) == 1 ? status : -1;
}

/* The string value of "key" in a flat JSON object (no escapes needed for the fields read here). */
static int json_str(const char *json, const char *key, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return -1;
    p = strchr(p + strlen(pat), ':');
    if (!p) return -1;
    while (*++p == ' ' || *p == '[') {}
    if (*p != '"') return -1;
    const char *e = strchr(++p, '"');
    if (!e || (size_t)(e - p) >= cap) return -1;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = 0;
    return 0;
}

static void *renewer(void *arg) {
    (void)arg;
    char path[256], resp[4096];
    snprintf(path, sizeof path, "/v1/leases/%s/renew", g_lease);
    for (;;) {
        sleep(g_ttl / 3 > 1 ? (unsigned)(g_ttl / 3) : 1);
        int st = http("POST", path, "{}", resp, sizeof resp);
        if (st != 200) fgc_log(FGC_LOG_WARN, "renewing lease %s failed (HTTP %d)", g_lease, st);
    }
    return NULL;
}

static void release(void) {
    char path[256], resp[4096];
    snprintf(path, sizeof path, "/v1/leases/%s", g_lease);
    int st = http("DELETE", path, "", resp, sizeof resp);
    fgc_log(FGC_LOG_INFO, "released lease %s (HTTP %d)", g_lease, st);
}

static int set_pool(const char *url) {
    g_https = strncmp(url, "https://", 8) == 0;
    const char *hp = g_https ? url + 8 : strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(hp, ':'), *slash = strchr(hp, '/');
    size_t hl = colon ? (size_t)(colon - hp) : slash ? (size_t)(slash - hp) : strlen(hp);
    if (hl >= sizeof g_host) return -1;
    memcpy(g_host, hp, hl);
    g_host[hl] = 0;
    if (colon) snprintf(g_port, sizeof g_port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    else snprintf(g_port, sizeof g_port, "%s", g_https ? "443" : "80");
    return 0;
}

/* Where the lease lives now (its session may have been parked and sent to another node): the stub's own lease, or
 * FARGPU_LEASE_ID at FARGPU_POOL_URL (with FARGPU_TOKEN), through POST /v1/leases/ID/resume, which places a parked
 * lease on a node first. 0 with the endpoint (and the token, when the pool answers one). */
int fgc_lease_where(char *endpoint, size_t ep_cap, char *token, size_t tok_cap) {
    const char *url = getenv("FARGPU_POOL_URL"), *id = getenv("FARGPU_LEASE_ID");
    if (!g_lease[0] && (!url || !*url || !id || !*id || strlen(id) >= sizeof g_lease)) return -1;
    if (!g_lease[0] && set_pool(url)) return -1;
    const char *tok = getenv("FARGPU_TOKEN");
    if (!g_token[0] && tok && strlen(tok) < sizeof g_token) snprintf(g_token, sizeof g_token, "%s", tok);
    if (!g_key[0]) find_api_key();
    char path[256], resp[16384], ep[512];
    /* resume: a parked lease is placed on a node first (the pool may start one); an older pool only answers GET */
    snprintf(path, sizeof path, "/v1/leases/%s/resume", g_lease[0] ? g_lease : id);
    int st = http("POST", path, "{\"wait_s\": 120}", resp, sizeof resp);
    if (st == 404 || st == 405) {
        snprintf(path, sizeof path, "/v1/leases/%s", g_lease[0] ? g_lease : id);
        st = http("GET", path, "", resp, sizeof resp);
    }
    const char *json = strstr(resp, "\r\n\r\n");
    if (st != 200 || !json || json_str(json, "endpoints", ep, sizeof ep)) return -1;
    const char *e = ep;
    if (!strncmp(e, "tcp://", 6)) e += 6;
    else if (!strncmp(e, "unix://", 7)) e += 7;
    snprintf(endpoint, ep_cap, "%s", e);
    token[0] = 0;
    if (tok_cap) json_str(json, "token", token, tok_cap);
    return 0;
}

int fgc_lease_from_pool(const char *url, char *endpoint, size_t ep_cap, char *token, size_t tok_cap) {
    g_https = strncmp(url, "https://", 8) == 0;
    const char *hp = g_https ? url + 8 : strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(hp, ':'), *slash = strchr(hp, '/');
    size_t hl = colon ? (size_t)(colon - hp) : slash ? (size_t)(slash - hp) : strlen(hp);
    if (hl >= sizeof g_host) return -1;
    memcpy(g_host, hp, hl);
    g_host[hl] = 0;
    if (colon) snprintf(g_port, sizeof g_port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    else snprintf(g_port, sizeof g_port, "%s", g_https ? "443" : "80");
    find_api_key();
    const char *ttl = getenv("FARGPU_LEASE_TTL");
    if (ttl && atof(ttl) >= 1 && atof(ttl) <= 86400) g_ttl = atof(ttl);
    if (!g_key[0])
        fgc_log(FGC_LOG_WARN, "no API key found (FARGPU_API_KEY, ~/.config/fargpu/api-key or the local key of a "
                              "pool manager on this machine); the pool manager will refuse the lease");
    const char *vram = getenv("FARGPU_VRAM");
    char body[1024], resp[16384], avoid[640] = "", ep[512];
    const char *e = NULL;
    for (int attempt = 0; attempt < 4; attempt++) {
        if (vram && (strlen(vram) > 32 || strpbrk(vram, "\"\\"))) vram = NULL;
        snprintf(body, sizeof body,
                 "{\"vram\": \"%s\", \"gpus\": 1, \"ttl_s\": %.0f, \"end_with_sessions\": true, \"avoid_nodes\": [%s]}",
                 vram ? vram : "1G", g_ttl, avoid);
        int st = http("POST", "/v1/leases", body, resp, sizeof resp);
        const char *json = strstr(resp, "\r\n\r\n");
        char node[128] = "";
        if (st != 201 || !json || json_str(json, "lease_id", g_lease, sizeof g_lease) ||
            json_str(json, "token", g_token, sizeof g_token) || json_str(json, "endpoints", ep, sizeof ep)) {
            char reason[300] = "";
            if (json) json_str(json, "reason", reason, sizeof reason);
            if (st < 0 && !g_https) /* no HTTP answer at all: perhaps a TLS pool spoken to in plaintext */
                snprintf(reason, sizeof reason, "no HTTP answer; if the pool speaks HTTPS, use https:// in "
                                                "FARGPU_POOL_URL");
            fgc_log(FGC_LOG_ERROR, "the pool manager at %s gave no lease (HTTP %d%s%s)", url, st,
                    reason[0] ? ": " : "", reason);
            g_token[0] = 0;
            return -1;
        }
        json_str(json, "node_id", node, sizeof node);
        e = ep;
        if (!strncmp(e, "tcp://", 6)) e += 6;
        else if (!strncmp(e, "unix://", 7)) e += 7;
        if (probe(e) == 0) break;
        fgc_log(FGC_LOG_INFO, "node %s of lease %s does not accept connections; leasing elsewhere", node, g_lease);
        char path[256];
        snprintf(path, sizeof path, "/v1/leases/%s", g_lease);
        http("DELETE", path, "", resp, sizeof resp);
        if (node[0] && !strpbrk(node, "\"\\") && strlen(avoid) + strlen(node) + 4 < sizeof avoid)
            snprintf(avoid + strlen(avoid), sizeof avoid - strlen(avoid), "%s\"%s\"", avoid[0] ? "," : "", node);
        e = NULL;
    }
    if (!e) {
        fgc_log(FGC_LOG_ERROR, "no node the pool manager at %s offered accepts connections", url);
        g_token[0] = 0;
        return -1;
    }
    snprintf(endpoint, ep_cap, "%s", e);
    snprintf(token, tok_cap, "%s", g_token);
    fgc_log(FGC_LOG_INFO, "leased %s on %s", g_lease, endpoint);
    atexit(release);
    pthread_t th;
    if (pthread_create(&th, NULL, renewer, NULL) == 0) pthread_detach(th);
    return 0;
}
