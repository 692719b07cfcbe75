/* pingpong.c — the transport floor: 64-byte ping-pong over loopback TCP (TCP_NODELAY) and a unix socket,
 * median round trip in µs. A synchronous remote call cannot beat this on the same host. Prints JSON. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { N = 20000, MSG = 64 };

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static int full(int fd, char *b, int n, int rd) {
    for (int d = 0; d < n;) {
        ssize_t k = rd ? read(fd, b + d, (size_t)(n - d)) : write(fd, b + d, (size_t)(n - d));
        if (k <= 0) return -1;
        d += (int)k;
    }
    return 0;
}
static void *echo(void *arg) {
    int fd = *(int *)arg;
    char b[MSG];
    while (full(fd, b, MSG, 1) == 0 && full(fd, b, MSG, 0) == 0) {}
    return NULL;
}
static double run(int cfd, int sfd) {
    pthread_t th;
    pthread_create(&th, NULL, echo, &sfd);
    static double t[N];
    char b[MSG] = {0};
    for (int i = 0; i < N; i++) {
        double a = now_us();
        full(cfd, b, MSG, 0);
        full(cfd, b, MSG, 1);
        t[i] = now_us() - a;
    }
    close(cfd);
    pthread_join(th, NULL);
    close(sfd);
    qsort(t, N, sizeof t[0], cmp);
    return t[N / 2];
}
int main(void) {
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    bind(ls, (struct sockaddr *)&sa, sizeof sa);
    listen(ls, 1);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&sa, sizeof sa);
    int s = accept(ls, NULL, NULL);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double tcp = run(c, s);
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    double unx = run(sv[0], sv[1]);
    printf("{\"tcp_pingpong_64b_us\": %.3f, \"unix_pingpong_64b_us\": %.3f}\n", tcp, unx);
    return 0;
}
