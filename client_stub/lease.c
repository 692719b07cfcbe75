/* lease.c — the stub leases for itself when FARGPU_POOL_URL is set and FARGPU_SERVER is not: it asks the
 * pool manager (plain HTTP/1.1 on loopback or a private network) for a lease of FARGPU_VRAM (default 1G),
 * connects to the endpoint it returns with the lease token, renews the lease from a background thread and
 * releases it when the process exits. `fargpu run` does the same from Python and is the usual way. */
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fgc_internal.h"
#include "fgc_lease.h"
#include "fgc_reconnect.h"

static char g_host[256], g_port[16], g_lease[128], g_token[512];
static double g_ttl = 60;

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
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "%s%s%sContent-Length: %zu\r\n\r\n%s",
                     method, path, g_host, g_port, g_token[0] ? "Authorization: Bearer " : "", g_token,
                     g_token[0] ? "\r\n" : "", strlen(body), body);
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
    const char *hp = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(hp, ':'), *slash = strchr(hp, '/');
    size_t hl = colon ? (size_t)(colon - hp) : slash ? (size_t)(slash - hp) : strlen(hp);
    if (hl >= sizeof g_host) return -1;
    memcpy(g_host, hp, hl);
    g_host[hl] = 0;
    if (colon) snprintf(g_port, sizeof g_port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    else snprintf(g_port, sizeof g_port, "80");
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
    const char *hp = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(hp, ':'), *slash = strchr(hp, '/');
    size_t hl = colon ? (size_t)(colon - hp) : slash ? (size_t)(slash - hp) : strlen(hp);
    if (hl >= sizeof g_host) return -1;
    memcpy(g_host, hp, hl);
    g_host[hl] = 0;
    if (colon) snprintf(g_port, sizeof g_port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    else snprintf(g_port, sizeof g_port, "80");
    const char *vram = getenv("FARGPU_VRAM");
    char body[256], resp[16384];
    snprintf(body, sizeof body, "{\"vram\": \"%s\", \"gpus\": 1, \"ttl_s\": %.0f}", vram ? vram : "1G", g_ttl);
    int st = http("POST", "/v1/leases", body, resp, sizeof resp);
    const char *json = strstr(resp, "\r\n\r\n");
    char ep[512];
    if (st != 201 || !json || json_str(json, "lease_id", g_lease, sizeof g_lease) ||
        json_str(json, "token", g_token, sizeof g_token) || json_str(json, "endpoints", ep, sizeof ep)) {
        char reason[300] = "";
        if (json) json_str(json, "reason", reason, sizeof reason);
        fgc_log(FGC_LOG_ERROR, "the pool manager at %s gave no lease (HTTP %d%s%s)", url, st, reason[0] ? ": " : "",
                reason);
        g_token[0] = 0;
        return -1;
    }
    const char *e = ep;
    if (!strncmp(e, "tcp://", 6)) e += 6;
    else if (!strncmp(e, "unix://", 7)) e += 7;
    snprintf(endpoint, ep_cap, "%s", e);
    snprintf(token, tok_cap, "%s", g_token);
    fgc_log(FGC_LOG_INFO, "leased %s on %s", g_lease, endpoint);
    atexit(release);
    pthread_t th;
    if (pthread_create(&th, NULL, renewer, NULL) == 0) pthread_detach(th);
    return 0;
}
