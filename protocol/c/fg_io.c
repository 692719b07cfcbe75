/* fg_io.c — blocking socket I/O of an exact byte count, and reads with deadlines (see fg_io.h). */
#include "fg_io.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>

int fg_io_full(int fd, void *p, size_t n, int writing) {
    uint8_t *b = (uint8_t *)p;
    while (n) {
        ssize_t k = writing ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

int fg_io_timeout_ms(void) {
    static int ms = -2;
    if (ms == -2) {
        const char *e = getenv("FARGPU_IO_TIMEOUT_S");
        double s = e && *e ? strtod(e, NULL) : 30.0;
        ms = s > 0 ? (int)(s * 1000.0) : -1;
    }
    return ms;
}

/* Wait until fd is readable or ms milliseconds passed (-1: forever). 1 readable, 0 deadline, -1 error. */
static int wait_readable(int fd, int ms) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int left = ms;
        if (ms >= 0) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            long spent = (long)(t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
            left = spent >= ms ? 0 : ms - (int)spent;
        }
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, left);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        return r > 0 ? 1 : 0;
    }
}

int fg_io_read_deadline(int fd, void *p, size_t n, int first_ms, int step_ms, size_t *got) {
    uint8_t *b = (uint8_t *)p;
    size_t done = 0;
    int rc = 0;
    int waited = 0;
    while (done < n) {
        int ms = done == 0 ? first_ms : step_ms;
        /* With a deadline, take what is there first (no poll in the common case), then wait for the rest. */
        ssize_t k = recv(fd, b + done, n - done, ms >= 0 && !waited ? MSG_DONTWAIT : 0);
        waited = 0;
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (ms < 0) continue; /* a non-blocking socket without a deadline: keep trying */
            int w = wait_readable(fd, ms);
            if (w == 0) { rc = -2; break; }
            if (w < 0) { rc = -1; break; }
            waited = 1;
            continue;
        }
        if (k <= 0) { rc = -1; break; }
        done += (size_t)k;
    }
    if (got) *got = done;
    return rc;
}

int fg_io_spin_us(const char *env, int dflt) {
    const char *e = getenv(env);
    int v = e && *e ? atoi(e) : dflt;
    return v < 0 ? 0 : v > 10000 ? 10000 : v;
}

int fg_io_spin_readable(int fd, int spin_us) {
    if (spin_us <= 0) return 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 0) > 0) return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 >= spin_us) return 0;
    }
}

void fg_io_send_deadline(int fd) {
    int ms = fg_io_timeout_ms();
    if (ms < 0) return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}
