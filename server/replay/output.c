/* output.c — device printf for the client. The worker points its standard output at a pipe and hands the read
 * end here (fgs_set_output). A thread drains the pipe into memory as the driver writes (so a flood of device
 * output can never block the driver on a full pipe); before each REPLY the session flushes stdio, collects
 * what is pending and sends it as OUTPUT frames, so the client sees the output before the synchronising call
 * that flushed it returns. At most 64 MiB is held between replies; beyond that output is dropped and the
 * client is told how much. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fgs_public.h"
#include "fgs_session.h"

#define OUTPUT_CAP (64u << 20)
#define OUTPUT_FRAME (1u << 20)

struct fgs_output {
    int fd;
    pthread_t thread;
    pthread_mutex_t mu;
    char *buf;
    size_t n, cap;
    uint64_t dropped;
};

/* Read whatever the pipe holds now (non-blocking), under the lock. */
static void drain_locked(struct fgs_output *o) {
    char tmp[65536];
    for (;;) {
        ssize_t k = read(o->fd, tmp, sizeof tmp);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return;
        size_t take = (size_t)k;
        if (o->n + take > OUTPUT_CAP) {
            o->dropped += take;
            continue;
        }
        if (o->n + take > o->cap) {
            size_t cap = o->cap ? o->cap : 65536;
            while (cap < o->n + take) cap *= 2;
            char *nb = (char *)realloc(o->buf, cap);
            if (!nb) {
                o->dropped += take;
                continue;
            }
            o->buf = nb;
            o->cap = cap;
        }
        memcpy(o->buf + o->n, tmp, take);
        o->n += take;
    }
}

static void *drainer(void *arg) {
    struct fgs_output *o = (struct fgs_output *)arg;
    for (;;) {
        struct pollfd p = {o->fd, POLLIN, 0};
        int r = poll(&p, 1, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 || (p.revents & (POLLERR | POLLNVAL))) return NULL;
        pthread_mutex_lock(&o->mu);
        drain_locked(o);
        pthread_mutex_unlock(&o->mu);
        if (p.revents & POLLHUP) return NULL;
    }
}

FGS_EXPORT int fgs_set_output(fgs_session *S, int fd) {
    if (S->output || fd < 0) return -1;
    struct fgs_output *o = (struct fgs_output *)calloc(1, sizeof *o);
    if (!o) return -1;
    o->fd = fd;
    pthread_mutex_init(&o->mu, NULL);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || pthread_create(&o->thread, NULL, drainer, o)) {
        pthread_mutex_destroy(&o->mu);
        free(o);
        return -1;
    }
    pthread_detach(o->thread);
    S->output = o;
    return 0;
}

int fgs_output_send(fgs_session *S, int sock, uint32_t seq) {
    struct fgs_output *o = S->output;
    if (!o) return 0;
    fflush(NULL); /* the driver prints device output through this process's stdio (any stream on fd 1) */
    pthread_mutex_lock(&o->mu);
    drain_locked(o);
    char *buf = o->buf;
    size_t n = o->n;
    uint64_t dropped = o->dropped;
    o->buf = NULL;
    o->n = o->cap = 0;
    o->dropped = 0;
    pthread_mutex_unlock(&o->mu);
    char note[128];
    int rc = 0, frames = 0;
    for (size_t off = 0; off < n && !rc; off += OUTPUT_FRAME, frames++) {
        size_t len = n - off < OUTPUT_FRAME ? n - off : OUTPUT_FRAME;
        fg_header h = {FG_MAGIC, FG_T_OUTPUT, 0, (uint32_t)len, seq};
        uint8_t hb[FG_HEADER_SIZE];
        fg_header_encode(&h, hb);
        struct iovec iov[2] = {{hb, sizeof hb}, {buf + off, len}};
        rc = fgs_write_all(sock, iov, 2);
    }
    if (dropped && !rc) {
        int k = snprintf(note, sizeof note, "\n[fargpu: %llu bytes of device output were dropped]\n",
                         (unsigned long long)dropped);
        fg_header h = {FG_MAGIC, FG_T_OUTPUT, 0, (uint32_t)k, seq};
        uint8_t hb[FG_HEADER_SIZE];
        fg_header_encode(&h, hb);
        struct iovec iov[2] = {{hb, sizeof hb}, {note, (size_t)k}};
        rc = fgs_write_all(sock, iov, 2);
        frames++;
    }
    free(buf);
    return rc ? -1 : frames;
}

void fgs_output_close(fgs_session *S) {
    /* The drainer thread stays detached on the pipe; the worker process exits right after the session. */
    S->output = NULL;
}
