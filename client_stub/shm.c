/* shm.c — the shared-memory transport, client side (protocol/SPEC.md, "Shared memory"; layout in fg_shm.h).
 *
 * On a unix socket the HELLO offers FARGPU_SHM_MB of shared memory (default 1024; 0: none). When the worker
 * accepts, the stub creates a memfd of that size, seals it against shrinking and growing (the worker can never
 * lose pages under a DMA), maps it, and sends it over the socket with SCM_RIGHTS. The worker maps the same pages
 * and registers them with the driver. Then:
 *   - cuMemAllocHost / cuMemHostAlloc carve their blocks from the region (first fit, page granularity; plain
 *     memory once it is full), so a copy from or to such a block names an offset and is a DMA in place, in
 *     stream order as for native pinned memory, and cuMemHostGetDevicePointer gives real mapped memory;
 *   - a large pageable copy goes through a staging ring in the region: one memcpy per chunk on this side,
 *     pipelined with the worker's DMA of the previous chunk; the worker publishes each finished chunk's sequence
 *     number in the region's header, and the stub waits for it by polling (watching the socket, so a dead worker
 *     ends the wait).
 * The region is MADV_DONTFORK, as the driver makes pinned memory: a forked child does not share it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fg_io.h"
#include "fg_shm.h"
#include "fgc_internal.h"
#include "fgc_transport.h"

#define STAGE_SLOTS 4
#define STAGE_SLOT (4u << 20)
#define STAGE_OFF FG_SHM_HEADER
#define HEAP_OFF (STAGE_OFF + STAGE_SLOTS * STAGE_SLOT)
#define PAGE 4096u

static uint8_t *g_base;
static size_t g_size;
static int g_on;
static uint64_t g_seq_htod, g_seq_dtoh; /* staged chunks sent so far (under g_stage_mu) */
static pthread_mutex_t g_stage_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- the region's heap: a sorted list of blocks, free or used ---- */
typedef struct {
    size_t off, n;
    int used;
} blk;
static blk *g_blk;
static size_t g_nblk, g_capblk;
static pthread_mutex_t g_heap_mu = PTHREAD_MUTEX_INITIALIZER;

uint64_t fgc_shm_offer_bytes(void) {
    const char *e = getenv("FARGPU_SHM_MB");
    uint64_t mb = e && *e ? strtoull(e, NULL, 10) : 1024;
    uint64_t b = mb << 20;
    if (b && b < HEAP_OFF + FG_SHM_MIN) b = HEAP_OFF + FG_SHM_MIN;
    return b > FG_SHM_MAX ? FG_SHM_MAX : b;
}

int fgc_shm_on(void) { return g_on; }

uint8_t *fgc_shm_base(void) { return g_on ? g_base : NULL; }

static void after_fork_child(void) { g_on = 0; } /* the region is not mapped in the child (MADV_DONTFORK) */

int fgc_shm_handshake(int fd) {
    uint64_t size = fgc_shm_offer_bytes();
    int mfd = memfd_create("fargpu-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    void *p = MAP_FAILED;
    if (mfd >= 0 && ftruncate(mfd, (off_t)size) == 0 &&
        fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (p == MAP_FAILED) {
        /* The worker waits for the SHM frame: tell it there is no region (size 0 with no descriptor ends the
         * session's handshake with a reason, so send a region-less frame only when one exists). */
        fgc_log(FGC_LOG_WARN, "cannot create the shared-memory region (%s); the session ends its handshake",
                strerror(errno));
        if (mfd >= 0) close(mfd);
        return -1;
    }
    madvise(p, (size_t)size, MADV_DONTFORK);
    ((fg_shm_header *)p)->magic = FG_SHM_MAGIC;
    fgc_db_offer(p);
    uint8_t frame[FG_HEADER_SIZE + 8];
    fg_header h = {FG_MAGIC, FG_T_SHM, 0, 8, 0};
    fg_header_encode(&h, frame);
    memcpy(frame + FG_HEADER_SIZE, &size, 8);
    struct iovec iov = {frame, sizeof frame};
    union {
        struct cmsghdr c;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &mfd, sizeof(int));
    ssize_t k;
    do k = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (k < 0 && errno == EINTR);
    close(mfd); /* the worker holds its own reference now */
    uint8_t ans[FG_HEADER_SIZE + 4];
    fg_header ah;
    int to = fg_io_timeout_ms();
    if (k != (ssize_t)sizeof frame || fg_io_read_deadline(fd, ans, sizeof ans, to < 0 ? -1 : 4 * to, to, NULL) ||
        fg_header_decode(ans, &ah, 4) || ah.type != FG_T_SHM || ah.length != 4) {
        munmap(p, (size_t)size);
        return -1;
    }
    uint32_t result;
    memcpy(&result, ans + FG_HEADER_SIZE, 4);
    if (result != 0) {
        fgc_log(FGC_LOG_INFO, "the node server declined the shared-memory region; copies go over the socket");
        munmap(p, (size_t)size);
        return 0;
    }
    g_base = (uint8_t *)p;
    g_size = (size_t)size;
    g_blk = (blk *)malloc(16 * sizeof *g_blk);
    if (g_blk) {
        g_capblk = 16;
        g_nblk = 1;
        g_blk[0] = (blk){HEAP_OFF, g_size - HEAP_OFF, 0};
    }
    g_on = 1;
    static int hooked;
    if (!hooked++) pthread_atfork(NULL, NULL, after_fork_child);
    fgc_log(FGC_LOG_INFO, "shared-memory transport on (%zu MiB)", g_size >> 20);
    return 0;
}

int fgc_shm_find(const void *p, size_t n, uint64_t *off) {
    if (!g_on) return 0;
    const uint8_t *q = (const uint8_t *)p;
    if (q < g_base + HEAP_OFF || q >= g_base + g_size || n > (size_t)(g_base + g_size - q)) return 0;
    if (off) *off = (uint64_t)(q - g_base);
    return 1;
}

void *fgc_shm_alloc(size_t n) {
    if (!g_on || !g_blk || n == 0 || n > g_size) return NULL;
    size_t want = (n + PAGE - 1) & ~(size_t)(PAGE - 1);
    void *out = NULL;
    pthread_mutex_lock(&g_heap_mu);
    for (size_t i = 0; i < g_nblk; i++) {
        if (g_blk[i].used || g_blk[i].n < want) continue;
        if (g_blk[i].n > want) { /* split: the rest stays free after it */
            if (g_nblk == g_capblk) {
                blk *nb = (blk *)realloc(g_blk, 2 * g_capblk * sizeof *nb);
                if (!nb) break;
                g_blk = nb;
                g_capblk *= 2;
            }
            memmove(g_blk + i + 2, g_blk + i + 1, (g_nblk - i - 1) * sizeof *g_blk);
            g_blk[i + 1] = (blk){g_blk[i].off + want, g_blk[i].n - want, 0};
            g_blk[i].n = want;
            g_nblk++;
        }
        g_blk[i].used = 1;
        out = g_base + g_blk[i].off;
        break;
    }
    pthread_mutex_unlock(&g_heap_mu);
    return out;
}

void fgc_shm_detach(void) {
    if (g_on) fgc_log(FGC_LOG_INFO, "the resumed session has no shared-memory region: copies go over the socket");
    g_on = 0; /* the region stays mapped: blocks handed out stay valid and are freed into it */
}

int fgc_shm_free(void *p) {
    if (!g_base || (uint8_t *)p < g_base + HEAP_OFF || (uint8_t *)p >= g_base + g_size) return -1;
    size_t off = (size_t)((uint8_t *)p - g_base);
    int rc = -1;
    pthread_mutex_lock(&g_heap_mu);
    for (size_t i = 0; i < g_nblk; i++) {
        if (g_blk[i].off != off || !g_blk[i].used) continue;
        g_blk[i].used = 0;
        if (i + 1 < g_nblk && !g_blk[i + 1].used) { /* merge with the next */
            g_blk[i].n += g_blk[i + 1].n;
            memmove(g_blk + i + 1, g_blk + i + 2, (g_nblk - i - 2) * sizeof *g_blk);
            g_nblk--;
        }
        if (i > 0 && !g_blk[i - 1].used) { /* and with the previous */
            g_blk[i - 1].n += g_blk[i].n;
            memmove(g_blk + i, g_blk + i + 1, (g_nblk - i - 1) * sizeof *g_blk);
            g_nblk--;
        }
        rc = 0;
        break;
    }
    pthread_mutex_unlock(&g_heap_mu);
    return rc;
}

/* ---- staged pageable copies ---- */

/* One core copies at 10-20 GB/s, less than the DMA engines move: a chunk is split over FARGPU_SHM_COPY_THREADS
 * (default 4) threads, the caller's and helpers parked on a condition variable between chunks. */
#define MAX_COPIERS 8
static pthread_mutex_t cp_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cp_go = PTHREAD_COND_INITIALIZER, cp_done = PTHREAD_COND_INITIALIZER;
static int cp_threads = -1, cp_started, cp_pending;
static uint64_t cp_gen;
static uint8_t *cp_dst;
static const uint8_t *cp_src;
static size_t cp_n;

static void part(int i, int k, size_t n, size_t *off, size_t *len) {
    size_t per = ((n + (size_t)k - 1) / (size_t)k + 4095) & ~(size_t)4095; /* k parts cover n */
    *off = per * (size_t)i < n ? per * (size_t)i : n;
    *len = *off + per < n ? per : n - *off;
}

static void *copier(void *arg) {
    int i = (int)(intptr_t)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&cp_mu);
    for (;;) {
        while (cp_gen == seen) pthread_cond_wait(&cp_go, &cp_mu);
        seen = cp_gen;
        uint8_t *d = cp_dst;
        const uint8_t *s = cp_src;
        size_t off, len;
        part(i, cp_threads, cp_n, &off, &len);
        pthread_mutex_unlock(&cp_mu);
        if (len) memcpy(d + off, s + off, len);
        pthread_mutex_lock(&cp_mu);
        if (--cp_pending == 0) pthread_cond_signal(&cp_done);
    }
    return NULL;
}

static void par_memcpy(void *dst, const void *src, size_t n) {
    if (cp_threads < 0) {
        const char *e = getenv("FARGPU_SHM_COPY_THREADS");
        int t = e && *e ? atoi(e) : 4;
        cp_threads = t < 1 ? 1 : t > MAX_COPIERS ? MAX_COPIERS : t;
    }
    if (cp_threads == 1 || n < (1u << 20)) {
        memcpy(dst, src, n);
        return;
    }
    pthread_mutex_lock(&cp_mu);
    while (cp_started < cp_threads - 1) { /* helpers 1..threads-1, started once */
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        int bad = pthread_create(&t, &a, copier, (void *)(intptr_t)(cp_started + 1));
        pthread_attr_destroy(&a);
        if (bad) break;
        cp_started++;
    }
    if (cp_started < cp_threads - 1) cp_threads = cp_started + 1;
    cp_dst = (uint8_t *)dst;
    cp_src = (const uint8_t *)src;
    cp_n = n;
    cp_pending = cp_threads - 1;
    cp_gen++;
    pthread_cond_broadcast(&cp_go);
    size_t off, len;
    part(0, cp_threads, n, &off, &len);
    pthread_mutex_unlock(&cp_mu);
    memcpy(dst, src, len); /* part 0 */
    pthread_mutex_lock(&cp_mu);
    while (cp_pending) pthread_cond_wait(&cp_done, &cp_mu);
    pthread_mutex_unlock(&cp_mu);
}

/* Wait until the worker published seq (or more) in *field. -1: the session ended meanwhile (the socket became
 * readable while no reply is due: a CLOSE, or the worker is gone). */
static int wait_seq(const uint64_t *field, uint64_t seq) {
    for (unsigned spin = 0;; spin++) {
        if (__atomic_load_n(field, __ATOMIC_ACQUIRE) >= seq) return 0;
        if (!g_on) return -1; /* the session resumed on another worker, which has no region: the copy fails */
        if (spin < 2000) continue;
        if (spin % 64 == 0) {
            struct pollfd pf = {g_fgc.fd, POLLIN, 0};
            if (g_fgc.broken || g_fgc.fd < 0 || poll(&pf, 1, 0) != 0) return -1;
        }
        if (spin < 20000) sched_yield();
        else {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Queue one staged chunk's record and send it at once (the worker must not wait for our next batch). */
static int send_chunk(uint16_t op, uint64_t a, uint64_t b, uint64_t n, uint64_t seq, CUstream stream, int sync) {
    fg_writer *w = fgc_begin(op);
    if (!w) return -1;
    if (op == FG_OP_SHM_HTOD) {
        fg_put_u64(w, a); /* dst */
        fgc_put_handle(w, stream);
        fg_put_u64(w, b); /* off */
    } else {
        fg_put_u64(w, b); /* off */
        fg_put_u64(w, a); /* src */
        fgc_put_handle(w, stream);
    }
    fg_put_u64(w, n);
    fg_put_u32(w, (sync ? FG_SHM_F_SYNC : 0) | FG_SHM_F_STAGED);
    fg_put_u64(w, seq);
    int rc = fgc_send_record_locked(0);
    pthread_mutex_unlock(&g_fgc.mu);
    return rc;
}

static CUresult finish(int failed, int sync) {
    if (!sync && !failed) return CUDA_SUCCESS; /* an async copy: its errors come with a later sync call */
    /* The chunks' errors come back as the deferred error of this PING: the copy's result. */
    fg_writer *w = fgc_begin(FG_OP_PING);
    if (!w) return fgc_last_error();
    CUresult r = fgc_sync();
    if (failed && r == CUDA_SUCCESS) r = fgc_state_error() ? fgc_state_error() : CUDA_ERROR_DEVICE_UNAVAILABLE;
    return r;
}

CUresult fgc_shm_staged_htod(CUdeviceptr dst, const void *src, size_t n, CUstream stream, int sync) {
    pthread_mutex_lock(&g_stage_mu);
    fg_shm_header *H = (fg_shm_header *)g_base;
    int failed = 0;
    for (size_t off = 0; off < n && !failed;) {
        size_t k = n - off < STAGE_SLOT ? n - off : STAGE_SLOT;
        uint64_t seq = ++g_seq_htod;
        /* The slot's previous chunk (STAGE_SLOTS back) must have been copied to the device (an earlier copy's
         * chunks all were: its PING was answered after them). */
        if (seq > STAGE_SLOTS && wait_seq(&H->htod_done, seq - STAGE_SLOTS)) {
            failed = 1;
            break;
        }
        size_t slot = STAGE_OFF + (size_t)((seq - 1) % STAGE_SLOTS) * STAGE_SLOT;
        par_memcpy(g_base + slot, (const uint8_t *)src + off, k);
        if (send_chunk(FG_OP_SHM_HTOD, dst + off, slot, k, seq, stream, sync)) failed = 1;
        off += k;
    }
    pthread_mutex_unlock(&g_stage_mu);
    return finish(failed, sync);
}

CUresult fgc_shm_staged_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream stream, int sync) {
    pthread_mutex_lock(&g_stage_mu);
    fg_shm_header *H = (fg_shm_header *)g_base;
    int failed = 0;
    size_t chunks = (n + STAGE_SLOT - 1) / STAGE_SLOT, sent = 0;
    uint64_t base = g_seq_dtoh;
    /* Keep STAGE_SLOTS chunks requested ahead of the one being copied out. */
    for (size_t c = 0; c < chunks && !failed; c++) {
        while (sent < chunks && sent < c + STAGE_SLOTS && !failed) {
            size_t off = sent * STAGE_SLOT, k = n - off < STAGE_SLOT ? n - off : STAGE_SLOT;
            size_t slot = STAGE_OFF + (size_t)((base + sent) % STAGE_SLOTS) * STAGE_SLOT;
            if (send_chunk(FG_OP_SHM_DTOH, src + off, slot, k, base + sent + 1, stream, sync)) failed = 1;
            sent++;
        }
        if (failed || wait_seq(&H->dtoh_ready, base + c + 1)) {
            failed = 1;
            break;
        }
        size_t off = c * STAGE_SLOT, k = n - off < STAGE_SLOT ? n - off : STAGE_SLOT;
        par_memcpy((uint8_t *)dst + off, g_base + STAGE_OFF + (size_t)((base + c) % STAGE_SLOTS) * STAGE_SLOT, k);
    }
    g_seq_dtoh = base + sent;
    if (failed) { /* chunks still in flight land in the ring later: wait for them so the next copy starts clean */
        pthread_mutex_unlock(&g_stage_mu);
        return finish(1, sync);
    }
    pthread_mutex_unlock(&g_stage_mu);
    return finish(0, sync);
}

/* ---- mapped host memory ---- */

int fgc_shm_devptr(const void *p, CUdeviceptr *out, CUresult *res) {
    uint64_t off;
    if (!fgc_shm_find(p, 1, &off)) return 0;
    fg_writer *w = fgc_begin(FG_OP_SHM_DEVPTR);
    if (!w) {
        *res = fgc_last_error();
        return 1;
    }
    fg_put_u64(w, off);
    uint64_t d = 0;
    fgc_expect(&d, sizeof d);
    *res = fgc_sync();
    if (*res == CUDA_SUCCESS) *out = (CUdeviceptr)d;
    return 1;
}
