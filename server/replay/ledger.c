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
 * u32 version 1, u32 slots, u32 0, u64 quota}, then `slots` slots of 64 bytes {u64 charged, ...}.
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

static _Atomic uint64_t *slot_bytes(const fgs_ledger *L, uint32_t i) {
    return (_Atomic uint64_t *)(void *)(L->base + LEDGER_HDR + (size_t)i * LEDGER_SLOT);
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

uint64_t fgs_ledger_sum(const fgs_ledger *L) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < L->slots; i++) sum += atomic_load(slot_bytes(L, i));
    return sum;
}

fgs_ledger *fgs_ledger_open(int fd, unsigned int slot) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (off_t)LEDGER_HDR) return NULL;
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return NULL;
    const uint8_t *h = (const uint8_t *)m;
    uint32_t magic, version, slots;
    uint64_t quota;
    memcpy(&magic, h, 4);
    memcpy(&version, h + 4, 4);
    memcpy(&slots, h + 8, 4);
    memcpy(&quota, h + 16, 8);
    fgs_ledger *L = NULL;
    if (magic == LEDGER_MAGIC && version == 1 && slots > 0 && slots <= LEDGER_MAX_SLOTS && slot < slots &&
        (uint64_t)st.st_size >= LEDGER_HDR + (uint64_t)slots * LEDGER_SLOT)
        L = (fgs_ledger *)calloc(1, sizeof *L);
    if (!L) {
        munmap(m, (size_t)st.st_size);
        return NULL;
    }
    *L = (fgs_ledger){fd, (uint8_t *)m, (size_t)st.st_size, slots, slot, quota};
    return L;
}

int fgs_ledger_try_charge(fgs_ledger *L, uint64_t bytes) {
    if (L->quota == 0) { /* no limit: the slot still says what the session holds */
        atomic_fetch_add(slot_bytes(L, L->slot), bytes);
        return 0;
    }
    if (lock_ledger(L, F_WRLCK) != 0) return -1;
    uint64_t sum = fgs_ledger_sum(L);
    int rc = -1;
    if (bytes <= L->quota && sum <= L->quota - bytes) {
        atomic_fetch_add(slot_bytes(L, L->slot), bytes);
        rc = 0;
    }
    lock_ledger(L, F_UNLCK);
    return rc;
}

void fgs_ledger_uncharge(fgs_ledger *L, uint64_t bytes) {
    uint64_t have = atomic_load(slot_bytes(L, L->slot));
    atomic_fetch_sub(slot_bytes(L, L->slot), bytes < have ? bytes : have);
}

void fgs_ledger_free(fgs_ledger *L) {
    if (!L) return;
    atomic_store(slot_bytes(L, L->slot), 0);
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

CUresult fgs_charge(fgs_session *S, uint64_t bytes) {
    if (!S->ledger) {
        if (S->vram_quota && (bytes > S->vram_quota || S->vram_used > S->vram_quota - bytes))
            return CUDA_ERROR_OUT_OF_MEMORY;
    } else if (fgs_ledger_try_charge(S->ledger, bytes) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    /* The lease's quota allows it; the node's GPU must have room too (paging.c may make some). */
    CUresult res = fgs_resident_charge(S, bytes);
    if (res != CUDA_SUCCESS) {
        if (S->ledger) fgs_ledger_uncharge(S->ledger, bytes);
        return res;
    }
    S->vram_used += bytes;
    return CUDA_SUCCESS;
}

void fgs_uncharge(fgs_session *S, uint64_t bytes) {
    if (bytes > S->vram_used) bytes = S->vram_used;
    S->vram_used -= bytes;
    if (S->ledger) fgs_ledger_uncharge(S->ledger, bytes);
    fgs_resident_uncharge(S, bytes);
}

uint64_t fgs_quota_left(fgs_session *S) {
    if (!S->vram_quota) return UINT64_MAX;
    uint64_t used = S->ledger ? fgs_ledger_sum(S->ledger) : S->vram_used;
    return used < S->vram_quota ? S->vram_quota - used : 0;
}

void fgs_ledger_close(fgs_session *S) {
    fgs_ledger_free(S->ledger);
    S->ledger = NULL;
}
