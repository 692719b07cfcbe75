/* doorbell.c — the worker's side of the doorbell (protocol/SPEC.md, "Doorbell"; the client's side and the reasoning
 * are in client_stub/doorbell.c, the words in fg_shm.h). After each reply the worker spins on the request mailbox
 * for FARGPU_WORKER_DOORBELL_US (default 100 µs; 0 turns the doorbell off; a tenth of it after an async batch),
 * turning to its sockets when the client starts a frame there and looking at them every 20 µs anyway; a
 * posted request is copied out of the mailbox once (the client's pages are never decoded in place) and served like
 * a batch from the socket, and its reply goes into the reply mailbox when it fits and the client is still spinning,
 * else over the socket. After its first microseconds the spin yields the CPU between looks (a client that shares
 * it gets to post), and it notes which CPU it is on (a client that finds the worker on its own CPU stops spinning
 * for the reply). When the spin runs out the worker says so (IDLE -> OFF) and sleeps in poll on its sockets, so a
 * post from then on comes over the socket, which wakes it. */
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fg_shm.h"
#include "fgs_public.h"
#include "fgs_session.h"

#define YIELD_AFTER 1024 /* spins (a few µs) before the worker yields its CPU between looks */

static int spin_ns(void) {
    static int ns = -1;
    if (ns < 0) {
        const char *e = getenv("FARGPU_WORKER_DOORBELL_US");
        long us = e && *e ? atol(e) : 100;
        ns = us <= 0 ? 0 : us > 100000 ? 100000000 : (int)(us * 1000);
    }
    return ns;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Note this thread's CPU in the header: a client that finds it on its own CPU stops spinning there. */
static void note_cpu(fg_shm_header *H) {
    int c = sched_getcpu();
    __atomic_store_n(&H->worker_cpu, c < 0 ? 0u : (uint32_t)c + 1, __ATOMIC_RELAXED);
}

static fg_shm_header *header(fgs_session *S) {
    uint8_t *b = fgs_shm_base(S);
    return b && spin_ns() && ((fg_shm_header *)b)->db_wanted ? (fg_shm_header *)b : NULL;
}

/* 1 when fd or ctl_fd has something to read (or hung up). */
static int sockets_ready(int fd, int ctl_fd) {
    struct pollfd pf[2] = {{fd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
    return poll(pf, ctl_fd >= 0 ? 2 : 1, 0) != 0;
}

int fgs_db_wait(fgs_session *S, int fd, int ctl_fd, int replied) {
    fg_shm_header *H = header(S);
    if (!H || fgs_client_pending(S)) return 0; /* (frames read ahead from the socket go first) */
    uint32_t st = __atomic_load_n(&H->db_worker, __ATOMIC_ACQUIRE);
    if (st == FG_DB_OFF || st == FG_DB_TAKEN) { /* only the worker leaves these: listen again */
        __atomic_store_n(&H->db_worker, FG_DB_IDLE, __ATOMIC_SEQ_CST);
    }
    uint64_t t0 = now_ns(), last_look = t0;
    /* After a reply the next call usually follows at once (the whole window); after an async batch the client is
     * streaming work, mostly over the socket (a tenth: a spinning worker only takes CPU from it there). */
    uint64_t window = replied ? (uint64_t)spin_ns() : (uint64_t)spin_ns() / 10;
    for (unsigned i = 1;; i++) {
        /* A frame the client began to write on the socket (it counts them) and this worker has not read goes first:
         * one sent before a post is wholly there already, and any other wakes the poll. The post is looked at
         * first: a frame counted before it is then seen counted. A client that counts fewer than were read (one
         * that does not count) only gets its own calls reordered. */
        int posted = __atomic_load_n(&H->db_worker, __ATOMIC_ACQUIRE) == FG_DB_POSTED;
        if ((int64_t)(__atomic_load_n(&H->sock_frames, __ATOMIC_ACQUIRE) - S->sock_frames_read) > 0) return 0;
        if (posted) return 1;
        if (i % 32 == 0) {
            uint64_t t = now_ns();
            if (t - last_look >= 20000) { /* async batches, control lines, a hang-up */
                if (sockets_ready(fd, ctl_fd)) return 0;
                last_look = t;
            }
            if (t - t0 >= window) {
                uint32_t idle = FG_DB_IDLE;
                if (__atomic_compare_exchange_n(&H->db_worker, &idle, FG_DB_OFF, 0, __ATOMIC_SEQ_CST,
                                                __ATOMIC_ACQUIRE))
                    return 0; /* asleep in poll: the next post comes over the socket */
                continue;     /* posted just now */
            }
        }
        if (i % 256 == 0) note_cpu(H);
        if (i > YIELD_AFTER && i % 8 == 0) {
            sched_yield(); /* a client runnable on this CPU (a host with fewer free cores than spinners) runs */
        } else {
            relax();
        }
    }
}

int fgs_db_take(fgs_session *S, fg_header *h, uint8_t **buf, size_t *cap, uint32_t max_frame, const char **why) {
    fg_shm_header *H = header(S);
    const uint8_t *req = fgs_shm_base(S) + FG_SHM_REQ_OFF;
    uint8_t hb[FG_HEADER_SIZE];
    memcpy(hb, req, sizeof hb); /* copied once: the client's pages may change under us */
    uint32_t limit = FG_SHM_MBOX - FG_HEADER_SIZE < max_frame ? FG_SHM_MBOX - FG_HEADER_SIZE : max_frame;
    *why = fg_header_decode(hb, h, limit);
    if (!*why && (h->type != FG_T_BATCH || !(h->flags & FG_F_WANT_REPLY)))
        *why = "a doorbell request that is not a batch waiting for its reply";
    if (*why) return -1;
    if (h->length > *cap) {
        uint8_t *nb = (uint8_t *)realloc(*buf, h->length);
        if (!nb) {
            *why = "out of memory";
            return -1;
        }
        *buf = nb;
        *cap = h->length;
    }
    memcpy(*buf, req + FG_HEADER_SIZE, h->length);
    note_cpu(H);
    __atomic_store_n(&H->db_worker, FG_DB_TAKEN, __ATOMIC_RELEASE);
    return 0;
}

int fgs_db_reply(fgs_session *S, int fd, struct iovec *iov, int n, size_t total, int on_socket) {
    fg_shm_header *H = header(S);
    if (!H) return fgs_write_all(fd, iov, n);
    /* The mailbox is free: the client posts again only after it has read this reply. */
    __atomic_store_n(&H->db_worker, FG_DB_IDLE, __ATOMIC_SEQ_CST);
    uint32_t waiting = FG_DB_WAITING;
    if (on_socket || total > FG_SHM_MBOX) { /* output frames went first on the socket, or it is too large */
        __atomic_compare_exchange_n(&H->db_client, &waiting, FG_DB_ON_SOCKET, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE);
        return fgs_write_all(fd, iov, n); /* (a client that went ASLEEP reads it there just the same) */
    }
    uint8_t *at = fgs_shm_base(S) + FG_SHM_REP_OFF;
    for (int i = 0; i < n; i++) {
        memcpy(at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    if (__atomic_compare_exchange_n(&H->db_client, &waiting, FG_DB_READY, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE))
        return 0;
    struct iovec one = {fgs_shm_base(S) + FG_SHM_REP_OFF, total}; /* it stopped spinning: it reads the socket */
    return fgs_write_all(fd, &one, 1);
}

int fgs_db_posted(fgs_session *S) {
    fg_shm_header *H = header(S);
    return H && __atomic_load_n(&H->db_worker, __ATOMIC_ACQUIRE) == FG_DB_POSTED;
}

void fgs_db_off(fgs_session *S) {
    fg_shm_header *H = header(S);
    if (H) __atomic_store_n(&H->db_worker, FG_DB_OFF, __ATOMIC_SEQ_CST);
}
