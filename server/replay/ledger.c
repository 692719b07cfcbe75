/* ledger.c — the VRAM a lease's sessions pin on this node, summed over all of them.
 *
 * A lease may run several sessions on one node, each in its own worker process; its quota covers them all. The
 * node agent gives every session of a lease the same shared ledger (a memfd, passed as a descriptor) and a slot
 * of its own in it. A worker writes only its own slot: the bytes it has charged (device allocations, rounded to
 * the allocation granularity, and each context it created, at the node's context charge). Admission sums every
 * slot under an fcntl record lock on the ledger, so two sessions allocating at once cannot both pass the quota.
 * The kernel drops a record lock when its process dies, and the agent zeroes a slot once its worker has been
 * reaped, so a killed worker leaves no charge and no held lock behind. One slot write per change keeps the
 * ledger consistent whatever instant a worker dies at: the write either happened or it did not.
 *
 * Layout (little-endian, written by the agent, server/lease_ledger.py): a 64-byte header {u32 magic "FGLD",
 * u32 version 1, u32 slots, u32 devices, u64 quota}, then `slots` slots of 64 bytes × ceil(max(devices, 1) / 8),
 * each {u64 charged[max(devices, 1)], ...}.
 * devices 0: one counter per slot, the quota covers the lease's charges on all GPUs together (a static token).
 * devices N: the lease has N GPUs here (the session sees exactly those, as ordinals 0..N-1: node_agent.py sets
 * CUDA_VISIBLE_DEVICES); counter d holds what is charged on ordinal d and the quota is per GPU, so a 2 × 8 GiB
 * lease may put 8 GiB on each of its two cards and never 16 on one.
 * Without a ledger (the engine used directly), the session's own quota from fgs_open applies.
 *
 * The node's resident ledger (paging.c) has the same layout: there a slot holds what a session has resident on
 * the GPU, and the quota is what the node lets be resident at once. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define LEDGER_MAGIC 0x444c4746u /* "FGLD" */
#define LEDGER_HDR 64u
#define LEDGER_SLOT 64u
#define LEDGER_MAX_SLOTS 4096u
#define LEDGER_MAX_DEVICES 64u

/* Slot i's counter for device ordinal `dev` (0 where the ledger has one counter per slot). */
static _Atomic uint64_t *dev_bytes(const fgs_ledger *L, uint32_t i, uint32_t dev) {
    return (_Atomic uint64_t *)(void *)(L->base + LEDGER_HDR + (size_t)i * L->stride + (size_t)dev * 8u);
}


/* The counter a charge on ordinal `dev` goes to, or -1 for an ordinal the lease has no GPU at. */
static int counter_of(const fgs_ledger *L, int dev) {
    if (L->devices == 0) return 0;
    return dev >= 0 && (uint32_t)dev < L->devices ? dev : -1;
}

static int lock_ledger(const fgs_ledger *L, short type) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = LEDGER_HDR; /* the header's bytes stand for the whole ledger */
    int rc;
    do rc = fcntl(L->fd, F_SETLKW, &fl);
    while (rc != 0 && errno == EINTR);
    return rc;
}

static uint64_t sum_counter(const fgs_ledger *L, uint32_t c) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < L->slots; i++) sum += atomic_load(dev_bytes(L, i, c));
    return sum;
}

uint64_t fgs_ledger_sum(const fgs_ledger *L) { return sum_counter(L, 0); }

uint64_t fgs_ledger_sum_dev(const fgs_ledger *L, int dev) {
    int c = counter_of(L, dev);
    return c < 0 ? 0 : sum_counter(L, (uint32_t)c);
}

fgs_ledger *fgs_ledger_open(int fd, unsigned int slot) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (off_t)LEDGER_HDR) return NULL;
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return NULL;
    const uint8_t *h = (const uint8_t *)m;
    uint32_t magic, version, slots, devices;
    uint64_t quota;
    memcpy(&magic, h, 4);
    memcpy(&version, h + 4, 4);
    memcpy(&slots, h + 8, 4);
    memcpy(&devices, h + 12, 4);
    memcpy(&quota, h + 16, 8);
    fgs_ledger *L = NULL;
    size_t stride = LEDGER_SLOT * (((devices ? devices : 1u) + 7u) / 8u);
    if (magic == LEDGER_MAGIC && version == 1 && slots > 0 && slots <= LEDGER_MAX_SLOTS && slot < slots &&
        devices <= LEDGER_MAX_DEVICES && (uint64_t)st.st_size >= LEDGER_HDR + (uint64_t)slots * stride)
        L = (fgs_ledger *)calloc(1, sizeof *L);
    if (!L) {
        munmap(m, (size_t)st.st_size);
        return NULL;
    }
    *L = (fgs_ledger){fd, (uint8_t *)m, (size_t)st.st_size, slots, slot, quota, devices, stride};
    return L;
}

int fgs_ledger_try_charge_dev(fgs_ledger *L, int dev, uint64_t bytes) {
    int c = counter_of(L, dev);
    if (c < 0) return -1;
    if (L->quota == 0) { /* no limit: the slot still says what the session holds */
        atomic_fetch_add(dev_bytes(L, L->slot, (uint32_t)c), bytes);
        return 0;
    }
    if (lock_ledger(L, F_WRLCK) != 0) return -1;
    uint64_t sum = sum_counter(L, (uint32_t)c);
    int rc = -1;
    if (bytes <= L->quota && sum <= L->quota - bytes) {
        atomic_fetch_add(dev_bytes(L, L->slot, (uint32_t)c), bytes);
        rc = 0;
    }
    lock_ledger(L, F_UNLCK);
    return rc;
}

int fgs_ledger_try_charge(fgs_ledger *L, uint64_t bytes) { return fgs_ledger_try_charge_dev(L, 0, bytes); }

void fgs_ledger_uncharge_dev(fgs_ledger *L, int dev, uint64_t bytes) {
    int c = counter_of(L, dev);
    if (c < 0) return;
    _Atomic uint64_t *at = dev_bytes(L, L->slot, (uint32_t)c);
    uint64_t have = atomic_load(at);
    atomic_fetch_sub(at, bytes < have ? bytes : have);
}

void fgs_ledger_uncharge(fgs_ledger *L, uint64_t bytes) { fgs_ledger_uncharge_dev(L, 0, bytes); }

void fgs_ledger_free(fgs_ledger *L) {
    if (!L) return;
    for (uint32_t d = 0; d < (L->devices ? L->devices : 1u); d++) atomic_store(dev_bytes(L, L->slot, d), 0);
    munmap(L->base, L->len);
    close(L->fd);
    free(L);
}

FGS_EXPORT int fgs_set_ledger(fgs_session *S, int fd, unsigned int slot, unsigned long long ctx_charge) {
    if (!S || S->ledger) return -1;
    S->ledger = fgs_ledger_open(fd, slot);
    if (!S->ledger) return -1;
    S->vram_quota = S->ledger->quota;
    S->ctx_charge = ctx_charge;
    return 0;
}

/* The ordinal of the calling thread's current context (0 when there is none: a charge needs some device). */
int fgs_current_device(fgs_session *S) {
    CUdevice dev = 0;
    if (S->api->cuCtxGetDevice(&dev) != CUDA_SUCCESS) return 0;
    return (int)dev;
}

CUresult fgs_charge_dev(fgs_session *S, int dev, uint64_t bytes) {
    if (!S->ledger) {
        if (S->vram_quota && (bytes > S->vram_quota || S->vram_used > S->vram_quota - bytes))
            return CUDA_ERROR_OUT_OF_MEMORY;
    } else if (counter_of(S->ledger, dev) < 0) {
        return CUDA_ERROR_INVALID_DEVICE; /* an ordinal the session does not see */
    } else if (fgs_ledger_try_charge_dev(S->ledger, dev, bytes) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    /* The lease's quota allows it; the node's GPU must have room too (paging.c may make some). */
    CUresult res = fgs_resident_charge(S, bytes);
    if (res != CUDA_SUCCESS) {
        if (S->ledger) fgs_ledger_uncharge_dev(S->ledger, dev, bytes);
        return res;
    }
    S->vram_used += bytes;
    return CUDA_SUCCESS;
}

CUresult fgs_charge(fgs_session *S, uint64_t bytes) { return fgs_charge_dev(S, fgs_current_device(S), bytes); }

void fgs_uncharge_dev(fgs_session *S, int dev, uint64_t bytes) {
    if (bytes > S->vram_used) bytes = S->vram_used;
    S->vram_used -= bytes;
    if (S->ledger) fgs_ledger_uncharge_dev(S->ledger, dev, bytes);
    fgs_resident_uncharge(S, bytes);
}

void fgs_uncharge(fgs_session *S, uint64_t bytes) { fgs_uncharge_dev(S, fgs_current_device(S), bytes); }

uint64_t fgs_quota_left_dev(fgs_session *S, int dev) {
    if (!S->vram_quota) return UINT64_MAX;
    uint64_t used = S->ledger ? fgs_ledger_sum_dev(S->ledger, dev) : S->vram_used;
    return used < S->vram_quota ? S->vram_quota - used : 0;
}

uint64_t fgs_quota_left(fgs_session *S) { return fgs_quota_left_dev(S, fgs_current_device(S)); }

void fgs_ledger_close(fgs_session *S) {
    fgs_ledger_free(S->ledger);
    S->ledger = NULL;
}
