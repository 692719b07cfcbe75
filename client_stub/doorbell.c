/* doorbell.c — small synchronous calls through the shared region instead of a socket round trip (protocol/SPEC.md,
 * "Doorbell"; the words and mailboxes are in fg_shm.h).
 *
 * While its worker spins on the request mailbox (db_worker IDLE), a synchronous batch that fits is written into
 * the mailbox and posted with one compare-and-swap; the stub then spins on the reply word for FARGPU_DOORBELL_SPIN_US
 * (default 100 µs; not while the worker last ran on this CPU) and reads the reply straight out of the reply
 * mailbox: no system call on either side. Neither side ever sleeps on shared memory: a worker that stopped
 * spinning has said so (OFF), and a post that finds it so goes over the socket as before; a stub that stops
 * spinning says so (ASLEEP) and reads the socket, where the worker then sends the reply. So a sleeping side is
 * woken by the socket, which also tells either side that its peer is gone (a dead worker: the read fails; a dead
 * client: the worker's poll sees the hang-up), with no timed waits and nothing that can hang on a word nobody will
 * write again. Ordering holds: a post is made under the write lock, after every earlier frame is wholly on the
 * socket, and every socket frame is counted in the header as its write begins (conn.c); the worker takes a posted
 * request only once it has read as many frames as were counted. FARGPU_SHM_DOORBELL=0 turns it off (every call
 * uses the socket). */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fg_shm.h"
#include "fgc_internal.h"
#include "fgc_transport.h"

static int g_enabled = -1, g_spin_us;
static int g_pending; /* a posted request awaits its reply (g_fgc.mu held from the post to the reply) */
static uint64_t g_posts, g_fallbacks;

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

/* 1 when the worker last ran on this thread's CPU: a spin here would only keep it from running (a host with fewer
 * free cores than spinners). */
static int cpu_shared(fg_shm_header *H) {
    int c = sched_getcpu();
    return c >= 0 && __atomic_load_n(&H->worker_cpu, __ATOMIC_RELAXED) == (uint32_t)c + 1;
}

static int enabled(void) {
    if (g_enabled < 0) {
        const char *e = getenv("FARGPU_SHM_DOORBELL");
        g_enabled = !(e && *e == '0');
        const char *s = getenv("FARGPU_DOORBELL_SPIN_US");
        int v = s && *s ? atoi(s) : 100;
        g_spin_us = v < 1 ? 1 : v > 100000 ? 100000 : v;
    }
    return g_enabled;
}

int fgc_db_post(const struct iovec *iov, int n, size_t total) {
    uint8_t *base = fgc_shm_base();
    if (!base || !enabled() || total > FG_SHM_MBOX) return 0;
    fg_shm_header *H = (fg_shm_header *)base;
    if (__atomic_load_n(&H->db_worker, __ATOMIC_ACQUIRE) != FG_DB_IDLE) {
        g_fallbacks++;
        return 0;
    }
    uint8_t *at = base + FG_SHM_REQ_OFF; /* free: the worker copied the last request out before it went IDLE */
    for (int i = 0; i < n; i++) {
        memcpy(at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    __atomic_store_n(&H->db_client, FG_DB_WAITING, __ATOMIC_RELAXED); /* published by the CAS below */
    uint32_t idle = FG_DB_IDLE;
    if (!__atomic_compare_exchange_n(&H->db_worker, &idle, FG_DB_POSTED, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
        g_fallbacks++; /* the worker went to sleep meanwhile: the socket wakes it */
        return 0;
    }
    g_posts++;
    g_pending = 1;
    return 1;
}

int fgc_db_wait(void) {
    if (!g_pending) return 0;
    g_pending = 0;
    uint8_t *base = fgc_shm_base();
    if (!base) return 0; /* a resume took the region away: the request went again over the socket */
    fg_shm_header *H = (fg_shm_header *)base;
    uint64_t deadline = now_ns() + (uint64_t)g_spin_us * 1000u;
    for (unsigned i = 1;; i++) {
        uint32_t st = __atomic_load_n(&H->db_client, __ATOMIC_ACQUIRE);
        if (st == FG_DB_READY) {
            fg_header h;
            if (fg_header_decode(base + FG_SHM_REP_OFF, &h, FG_SHM_MBOX - FG_HEADER_SIZE)) return -1;
            fgc_io_from_memory(base + FG_SHM_REP_OFF, FG_HEADER_SIZE + (size_t)h.length);
            return 1;
        }
        if (st == FG_DB_ON_SOCKET) return 0;
        if ((i % 64 == 0 && now_ns() > deadline) || (i % 256 == 1 && cpu_shared(H))) {
            uint32_t waiting = FG_DB_WAITING;
            if (__atomic_compare_exchange_n(&H->db_client, &waiting, FG_DB_ASLEEP, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_ACQUIRE))
                return 0; /* the worker sends the reply over the socket */
            continue;     /* it answered just now */
        }
        relax();
    }
}

void fgc_db_forget(void) { g_pending = 0; }

void fgc_db_offer(void *region) {
    if (enabled()) ((fg_shm_header *)region)->db_wanted = 1;
}

void fgc_db_note_socket_frame(void) {
    uint8_t *base = g_enabled > 0 ? fgc_shm_base() : NULL;
    if (base) __atomic_fetch_add(&((fg_shm_header *)base)->sock_frames, 1, __ATOMIC_RELEASE);
}

void fgc_db_stats(uint64_t *posts, uint64_t *fallbacks) {
    *posts = g_posts;
    *fallbacks = g_fallbacks;
}

__attribute__((destructor)) static void print_stats(void) {
    const char *e = getenv("FARGPU_STATS");
    if (!e || strcmp(e, "1") || (!g_posts && !g_fallbacks)) return;
    fprintf(stderr, "fargpu: doorbell: %llu synchronous batches through shared memory, %llu over the socket (the "
                    "worker was not spinning)\n", (unsigned long long)g_posts, (unsigned long long)g_fallbacks);
}
