/* floors.c — the raw transport floors of the machine, measured in the same run as the fargpu figures
 * (bench/transport_gpu.sh): what no copy through fargpu can beat on this host. 64-byte ping-pong round trips over
 * loopback TCP (TCP_NODELAY) and a unix socket; bulk throughput over 1 and N loopback TCP streams (one sender and
 * one receiver thread per stream, 2 MiB writes) and over a unix socket; single-threaded memcpy of 256 MiB.
 * Medians. Prints one JSON object. Usage: floors [MiB per stream, default 1024] [max streams, default 8] | floors --rtt
 * (the ping-pongs alone). */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { PINGS = 20000, MSG = 64, REPS = 5 };
#define PIECE (2u << 20)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
static int full(int fd, char *b, size_t n, int rd) {
    for (size_t d = 0; d < n;) {
        ssize_t k = rd ? read(fd, b + d, n - d) : write(fd, b + d, n - d);
        if (k <= 0) return -1;
        d += (size_t)k;
    }
    return 0;
}

/* A connected pair: TCP over loopback (tcp 1) or a unix socketpair. */
static void pair(int tcp, int fds[2]) {
    if (!tcp) {
        socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
        return;
    }
    int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    bind(ls, (struct sockaddr *)&sa, sizeof sa);
    listen(ls, 1);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    connect(fds[0], (struct sockaddr *)&sa, sizeof sa);
    fds[1] = accept(ls, NULL, NULL);
    close(ls);
    setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void *echo(void *arg) {
    int fd = *(int *)arg;
    char b[MSG];
    while (full(fd, b, MSG, 1) == 0 && full(fd, b, MSG, 0) == 0) {}
    return NULL;
}

static double rtt_us(int tcp) {
    int fds[2];
    pair(tcp, fds);
    pthread_t th;
    pthread_create(&th, NULL, echo, &fds[1]);
    static double t[PINGS];
    char b[MSG] = {0};
    for (int i = 0; i < PINGS; i++) {
        double a = now_s();
        full(fds[0], b, MSG, 0);
        full(fds[0], b, MSG, 1);
        t[i] = (now_s() - a) * 1e6;
    }
    close(fds[0]);
    pthread_join(th, NULL);
    close(fds[1]);
    return median(t, PINGS);
}

typedef struct {
    int fd, rd;
    size_t bytes;
    pthread_t t;
} mover;

static void *move(void *arg) {
    mover *m = (mover *)arg;
    char *buf = malloc(PIECE);
    memset(buf, 1, PIECE);
    for (size_t d = 0; d < m->bytes; d += PIECE)
        if (full(m->fd, buf, PIECE, m->rd)) break;
    free(buf);
    return NULL;
}

/* GB/s moving `mib` MiB over each of n streams at once. */
static double stream_gbps(int tcp, int n, size_t mib) {
    mover m[2 * 16];
    int fds[16][2];
    for (int i = 0; i < n; i++) pair(tcp, fds[i]);
    double a = now_s();
    for (int i = 0; i < n; i++) {
        m[2 * i] = (mover){fds[i][0], 0, mib << 20, 0};
        m[2 * i + 1] = (mover){fds[i][1], 1, mib << 20, 0};
        pthread_create(&m[2 * i].t, NULL, move, &m[2 * i]);
        pthread_create(&m[2 * i + 1].t, NULL, move, &m[2 * i + 1]);
    }
    for (int i = 0; i < 2 * n; i++) pthread_join(m[i].t, NULL);
    double s = now_s() - a;
    for (int i = 0; i < n; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
    return (double)n * (double)(mib << 20) / s / 1e9;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--rtt")) {
        printf("{\"floor_tcp_rtt_us\": %.3f, \"floor_unix_rtt_us\": %.3f}\n", rtt_us(1), rtt_us(0));
        return 0;
    }
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 1024;
    int maxn = argc > 2 ? atoi(argv[2]) : 8;
    if (maxn > 16) maxn = 16;
    double v[REPS];
    printf("{\"floor_tcp_rtt_us\": %.3f, \"floor_unix_rtt_us\": %.3f", rtt_us(1), rtt_us(0));
    for (int n = 1; n <= maxn; n *= 2) {
        for (int r = 0; r < REPS; r++) v[r] = stream_gbps(1, n, mib / (size_t)n > 64 ? mib / (size_t)n : 64);
        printf(", \"floor_tcp%d_GBps\": %.3f", n, median(v, REPS));
    }
    for (int r = 0; r < REPS; r++) v[r] = stream_gbps(0, 1, mib);
    printf(", \"floor_unix_GBps\": %.3f", median(v, REPS));
    size_t big = 256u << 20;
    char *a = malloc(big), *b = malloc(big);
    memset(a, 3, big);
    memset(b, 4, big);
    for (int r = 0; r < REPS; r++) {
        double t = now_s();
        memcpy(b, a, big);
        v[r] = (double)big / (now_s() - t) / 1e9;
    }
    printf(", \"floor_memcpy_GBps\": %.3f}\n", median(v, REPS));
    free(a);
    free(b);
    return 0;
}
