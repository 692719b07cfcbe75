/* memory.c — device memory for a session. Every allocation is made with the VMM API (reserve an address
 * range, create physical memory, map it, grant access), so a session's memory can later be paged out and
 * mapped back at the same address. Allocations are charged to the lease's VRAM quota. Copies read and
 * write straight between the frame / reply buffers and the device. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define LATER_LIMIT (1ull << 30) /* staged async device→host bytes a client may leave uncollected */

static CUresult current_device(fgs_session *S, CUdevice *dev) { return S->api->cuCtxGetDevice(dev); }

static fgs_alloc *find_alloc(fgs_session *S, CUdeviceptr p, int containing) {
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (a->ptr == p || (containing && p >= a->ptr && p < a->ptr + a->size)) return a;
    }
    return NULL;
}

CUresult fgs_cuMemAlloc_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    CUdevice dev;
    CUresult res = current_device(S, &dev);
    if (res != CUDA_SUCCESS) return res;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    size_t gran = 0;
    res = S->api->cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (res != CUDA_SUCCESS) return res;
    if (gran == 0) gran = 2u << 20;
    if (size > UINT64_MAX - gran) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t mapped = (size_t)((size + gran - 1) / gran * gran);
    if (S->vram_quota && S->vram_used + mapped > S->vram_quota) return CUDA_ERROR_OUT_OF_MEMORY;
    if (S->n_allocs == S->cap_allocs) {
        size_t cap = S->cap_allocs ? S->cap_allocs * 2 : 64;
        fgs_alloc *na = (fgs_alloc *)realloc(S->allocs, cap * sizeof *na);
        if (!na) return CUDA_ERROR_OUT_OF_MEMORY;
        S->allocs = na;
        S->cap_allocs = cap;
    }
    CUdeviceptr ptr = 0;
    CUmemGenericAllocationHandle h = 0;
    res = S->api->cuMemAddressReserve(&ptr, mapped, 0, 0, 0);
    if (res != CUDA_SUCCESS) return res == CUDA_ERROR_INVALID_VALUE ? CUDA_ERROR_OUT_OF_MEMORY : res;
    res = S->api->cuMemCreate(&h, mapped, &prop, 0);
    if (res != CUDA_SUCCESS) {
        S->api->cuMemAddressFree(ptr, mapped);
        return res;
    }
    res = S->api->cuMemMap(ptr, mapped, 0, h, 0);
    if (res == CUDA_SUCCESS) {
        CUmemAccessDesc ad;
        memset(&ad, 0, sizeof ad);
        ad.location = prop.location;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        res = S->api->cuMemSetAccess(ptr, mapped, &ad, 1);
        if (res != CUDA_SUCCESS) S->api->cuMemUnmap(ptr, mapped);
    }
    if (res != CUDA_SUCCESS) {
        S->api->cuMemRelease(h);
        S->api->cuMemAddressFree(ptr, mapped);
        return res;
    }
    S->allocs[S->n_allocs++] = (fgs_alloc){ptr, (size_t)size, mapped, h};
    S->vram_used += mapped;
    fg_put_u64(out, ptr);
    return CUDA_SUCCESS;
}

static void release(fgs_session *S, fgs_alloc *a) {
    S->api->cuMemUnmap(a->ptr, a->mapped);
    S->api->cuMemRelease(a->handle);
    S->api->cuMemAddressFree(a->ptr, a->mapped);
    S->vram_used -= a->mapped;
}

CUresult fgs_cuMemFree_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    fgs_alloc *a = find_alloc(S, p, 0);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    /* cuMemFree waits for work that may still use the memory; unmapping does not, so wait here. */
    S->api->cuCtxSynchronize();
    release(S, a);
    *a = S->allocs[--S->n_allocs];
    return CUDA_SUCCESS;
}

void fgs_memory_release_all(fgs_session *S) {
    if (S->n_allocs) S->api->cuCtxSynchronize();
    for (size_t i = 0; i < S->n_allocs; i++) release(S, &S->allocs[i]);
    S->n_allocs = 0;
}

CUresult fgs_cuMemGetInfo_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)r;
    size_t free_b = 0, total_b = 0;
    CUresult res = S->api->cuMemGetInfo_v2(&free_b, &total_b);
    if (res != CUDA_SUCCESS) return res;
    if (S->vram_quota) {
        uint64_t left = S->vram_quota > S->vram_used ? S->vram_quota - S->vram_used : 0;
        if (total_b > S->vram_quota) total_b = (size_t)S->vram_quota;
        if (free_b > left) free_b = (size_t)left;
    }
    fg_put_u64(out, free_b);
    fg_put_u64(out, total_b);
    return CUDA_SUCCESS;
}

static fgs_alloc *find_global(fgs_session *S, uint64_t p) {
    for (size_t i = 0; i < S->n_globals; i++)
        if (p >= S->globals[i].ptr && p - S->globals[i].ptr < S->globals[i].size) return &S->globals[i];
    return NULL;
}

/* A module or library global the driver named for this session (cuModuleGetGlobal, cuLibraryGetGlobal):
 * copies may use its range, as they may the session's allocations. */
void fgs_note_global(fgs_session *S, CUdeviceptr p) {
    CUdeviceptr base = 0;
    size_t size = 0;
    if (!S->api->cuMemGetAddressRange_v2 || S->api->cuMemGetAddressRange_v2(&base, &size, p) != CUDA_SUCCESS || !size)
        return;
    if (find_global(S, base)) return;
    if (S->n_globals == S->cap_globals) {
        size_t cap = S->cap_globals ? S->cap_globals * 2 : 16;
        fgs_alloc *ng = (fgs_alloc *)realloc(S->globals, cap * sizeof *ng);
        if (!ng) return;
        S->globals = ng;
        S->cap_globals = cap;
    }
    memset(&S->globals[S->n_globals], 0, sizeof S->globals[0]);
    S->globals[S->n_globals].ptr = base;
    S->globals[S->n_globals].size = size;
    S->n_globals++;
}

CUresult fgs_cuMemGetAddressRange_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    fgs_alloc *a = find_alloc(S, p, 1);
    if (!a) a = find_global(S, p);
    if (!a) return CUDA_ERROR_NOT_FOUND;
    fg_put_u64(out, a->ptr);
    fg_put_u64(out, a->size);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemcpyHtoD_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t dst = fg_get_u64(r), n = fg_get_u64(r);
    const uint8_t *src = fg_take(r, (size_t)n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    return S->api->cuMemcpyHtoD_v2(dst, src, (size_t)n);
}

CUresult fgs_cuMemcpyDtoH_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t src = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (n > FG_CHUNK) return CUDA_ERROR_INVALID_VALUE;
    void *dst = fg_put_space(out, (size_t)n);
    if (!dst) return CUDA_ERROR_OUT_OF_MEMORY;
    return S->api->cuMemcpyDtoH_v2(dst, src, (size_t)n);
}

CUresult fgs_cuMemcpyHtoDAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t dst = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    const uint8_t *src = fg_take(r, (size_t)n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    /* The source is the frame buffer (pageable): the driver has consumed it when the call returns. */
    return S->api->cuMemcpyHtoDAsync_v2(dst, src, (size_t)n, (CUstream)s);
}

CUresult fgs_cuMemcpyDtoHAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t src = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (n > FG_CHUNK || S->later_bytes + n > LATER_LIMIT) return FGS_PROTOCOL_ERROR;
    if (S->n_later == S->cap_later) {
        size_t cap = S->cap_later ? S->cap_later * 2 : 32;
        fgs_later *nl = (fgs_later *)realloc(S->later, cap * sizeof *nl);
        if (!nl) return CUDA_ERROR_OUT_OF_MEMORY;
        S->later = nl;
        S->cap_later = cap;
    }
    void *stage = malloc(n ? (size_t)n : 1);
    if (!stage) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = S->api->cuMemcpyDtoHAsync_v2(stage, src, (size_t)n, (CUstream)s);
    if (res != CUDA_SUCCESS) memset(stage, 0, (size_t)n);
    /* Queued even on failure: the client expects these bytes in the next reply. */
    S->later[S->n_later++] = (fgs_later){stage, (size_t)n, (CUstream)s};
    S->later_bytes += n;
    return res;
}

void fgs_later_free_all(fgs_session *S) {
    for (size_t i = 0; i < S->n_later; i++) free(S->later[i].data);
    S->n_later = 0;
    S->later_bytes = 0;
}

/* Device-to-device copies (and unified cuMemcpy, which the stub sends here only for two device
 * addresses) touch nothing but this session's own allocations: a client address that is not one of them
 * would make the driver read or write the worker's host memory. */
/* A module or library was unloaded: forget every noted global (the live ones are noted again when named). */
void fgs_globals_forget(fgs_session *S) { S->n_globals = 0; }

static int in_session(fgs_session *S, uint64_t p, uint64_t n) {
    fgs_alloc *a = find_alloc(S, p, 1);
    if (!a) a = find_global(S, p);
    return a && n <= a->ptr + a->size - p;
}

static CUresult dtod(fgs_session *S, fg_reader *r, int async) {
    uint64_t dst = fg_get_u64(r), src = fg_get_u64(r), n = fg_get_u64(r);
    uint64_t sid = async ? fg_get_u64(r) : 0;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!in_session(S, dst, n) || !in_session(S, src, n)) return CUDA_ERROR_INVALID_VALUE;
    if (!async) return S->api->cuMemcpyDtoD_v2(dst, src, (size_t)n);
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    return S->api->cuMemcpyDtoDAsync_v2(dst, src, (size_t)n, (CUstream)s);
}

CUresult fgs_cuMemcpyDtoD_v2(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return dtod(S, r, 0); }
CUresult fgs_cuMemcpy(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return dtod(S, r, 0); }
CUresult fgs_cuMemcpyDtoDAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return dtod(S, r, 1); }
CUresult fgs_cuMemcpyAsync(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return dtod(S, r, 1); }
