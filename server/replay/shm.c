/* shm.c — the worker's side of the shared-memory transport (protocol/c/fg_shm.h). The node agent hands the
 * worker a co-located client's sealed memfd at the handshake (server/worker.py); it is mapped here and registered
 * with the driver (portable, device-mapped) at the first copy (shm_ready). Copies that name an offset in the region run as DMA straight between the client's pages and the
 * device: async ones in stream order, as for native pinned memory, sync ones before the reply. Staged chunks of
 * pageable copies are copied synchronously and then published in the region's header, so the client refills or
 * drains a slot while the next one is in flight. A region the driver would not register still works (the
 * driver stages it), but mapped-memory device pointers are refused. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fg_shm.h"
#include "fgs_impl.h"
#include "fgs_public.h"
#include "fgs_session.h"

struct fgs_shm {
    uint8_t *base;
    size_t size;
    int registered;
    CUcontext ctx; /* the context current at the last registration check */
};

FGS_EXPORT int fgs_shm_attach(fgs_session *S, int fd, unsigned long long size, char *err, unsigned long errlen) {
    struct stat st;
    int seals = fcntl(fd, F_GET_SEALS);
    if (S->shm) snprintf(err, errlen, "the session already has a shared-memory region");
    else if (size < FG_SHM_MIN || size > FG_SHM_MAX) snprintf(err, errlen, "region size %llu out of range", size);
    else if (fstat(fd, &st) || (unsigned long long)st.st_size < size) snprintf(err, errlen, "the memfd is smaller than offered");
    else if (seals < 0 || !(seals & F_SEAL_SHRINK)) snprintf(err, errlen, "the memfd is not sealed against shrinking");
    else err[0] = 0;
    if (err[0]) {
        close(fd);
        return -1;
    }
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot map the region: %s", strerror(errno));
        return -1;
    }
    struct fgs_shm *m = (struct fgs_shm *)calloc(1, sizeof *m);
    if (!m) {
        munmap(p, (size_t)size);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->base = (uint8_t *)p;
    m->size = (size_t)size;
    S->shm = m;
    fgs_log(S, "shared-memory transport: %llu bytes mapped", size);
    return 0;
}

/* Registration is made under the context current at the first copy (portable, so every context may use it;
 * the worker holds no reference of its own, so the application's contexts live and die as they would
 * natively). When the current context changes, the region is registered again unless it still is: a destroyed
 * context takes its registrations with it. Unregistered, copies stay correct (the driver stages them). */
static void shm_ready(fgs_session *S) {
    struct fgs_shm *m = S->shm;
    CUcontext cur = NULL;
    if (S->api->cuCtxGetCurrent(&cur) != CUDA_SUCCESS || !cur || (cur == m->ctx && m->registered)) return;
    m->ctx = cur;
    CUresult r = S->api->cuMemHostRegister_v2 ? S->api->cuMemHostRegister_v2(m->base, m->size,
                                                   CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP)
                                              : CUDA_ERROR_NOT_SUPPORTED;
    int was = m->registered;
    m->registered = r == CUDA_SUCCESS || r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    if (!m->registered && (was || !m->ctx))
        fgs_log(S, "the shared-memory region could not be registered with the driver (%d): copies through it are "
                   "staged by the driver, and mapped host memory is not available", (int)r);
}

/* A context became current (fgs_set_ctx, cuCtxCreate): register the region now, not in the middle of the first
 * copy. Pinning a large region takes a while (its pages are allocated then); natively that cost is paid when the
 * context and the pinned memory are made, which is when the application expects it (PyTorch's first tensor copy
 * through a 1 GiB region took 0.36 s instead of 0.03 s when this was left to the copy). */
void fgs_shm_on_ctx(fgs_session *S) {
    if (S->shm) shm_ready(S);
}

/* A context may be about to go (and its registrations with it): check again at the next copy. */
void fgs_shm_forget_ctx(fgs_session *S) {
    if (S->shm) {
        S->shm->ctx = NULL;
        S->shm->registered = 0;
    }
}

void fgs_shm_close(fgs_session *S) {
    struct fgs_shm *m = S->shm;
    if (!m) return;
    if (m->registered && S->api->cuMemHostUnregister) {
        S->api->cuCtxSynchronize(); /* no DMA may still touch the pages */
        S->api->cuMemHostUnregister(m->base);
    }
    munmap(m->base, m->size);
    free(m);
    S->shm = NULL;
}

uint8_t *fgs_shm_base(fgs_session *S) { return S->shm ? S->shm->base : NULL; }

/* The region's bytes [off, off + n), or NULL when they are not all in the client's part of it. */
static uint8_t *span(fgs_session *S, uint64_t off, uint64_t n) {
    struct fgs_shm *m = S->shm;
    if (!m || off < FG_SHM_HEADER || off > m->size || n > m->size - off) return NULL;
    return m->base + off;
}

static void publish(fgs_session *S, size_t field, uint64_t seq) {
    uint64_t *p = (uint64_t *)(S->shm->base + field);
    __atomic_store_n(p, seq, __ATOMIC_RELEASE);
}

CUresult fgs_shm_htod(fgs_session *S, fg_reader *r) {
    uint64_t dst = fg_get_u64(r), sid = fg_get_u64(r), off = fg_get_u64(r), n = fg_get_u64(r);
    uint32_t flags = fg_get_u32(r);
    uint64_t seq = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->shm) return CUDA_ERROR_INVALID_VALUE;
    shm_ready(S);
    uint8_t *src = span(S, off, n);
    void *s = NULL;
    CUresult res;
    if (!src) res = CUDA_ERROR_INVALID_VALUE;
    else if (fgs_handle_get(S, FGH_STREAM, sid, &s)) res = CUDA_ERROR_INVALID_HANDLE;
    else if (flags & FG_SHM_F_SYNC) res = S->api->cuMemcpyHtoD_v2(dst, src, (size_t)n);
    else res = S->api->cuMemcpyHtoDAsync_v2(dst, src, (size_t)n, (CUstream)s);
    if (res == CUDA_SUCCESS && (flags & FG_SHM_F_STAGED) && !(flags & FG_SHM_F_SYNC))
        res = S->api->cuStreamSynchronize((CUstream)s); /* the slot is reused once this returns */
    if (flags & FG_SHM_F_STAGED) publish(S, offsetof(fg_shm_header, htod_done), seq); /* even when it failed */
    return res;
}

CUresult fgs_shm_dtoh(fgs_session *S, fg_reader *r) {
    uint64_t off = fg_get_u64(r), src = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    uint32_t flags = fg_get_u32(r);
    uint64_t seq = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->shm) return CUDA_ERROR_INVALID_VALUE;
    shm_ready(S);
    uint8_t *dst = span(S, off, n);
    void *s = NULL;
    CUresult res;
    if (!dst) res = CUDA_ERROR_INVALID_VALUE;
    else if (fgs_handle_get(S, FGH_STREAM, sid, &s)) res = CUDA_ERROR_INVALID_HANDLE;
    else if (flags & FG_SHM_F_SYNC) res = S->api->cuMemcpyDtoH_v2(dst, src, (size_t)n);
    else res = S->api->cuMemcpyDtoHAsync_v2(dst, src, (size_t)n, (CUstream)s);
    if (res == CUDA_SUCCESS && (flags & FG_SHM_F_STAGED) && !(flags & FG_SHM_F_SYNC))
        res = S->api->cuStreamSynchronize((CUstream)s); /* the data is in the slot once this returns */
    if (flags & FG_SHM_F_STAGED) publish(S, offsetof(fg_shm_header, dtoh_ready), seq);
    return res;
}

CUresult fgs_shm_devptr(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t off = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    uint8_t *p = span(S, off, 1);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    shm_ready(S);
    if (!S->shm->registered || !S->api->cuMemHostGetDevicePointer_v2) return CUDA_ERROR_NOT_SUPPORTED;
    CUdeviceptr d = 0;
    CUresult res = S->api->cuMemHostGetDevicePointer_v2(&d, p, 0);
    if (res == CUDA_SUCCESS) fg_put_u64(out, d);
    return res;
}
