/* memory.c — device memory for a session. Every allocation is made with the VMM API (reserve an address
 * range, create physical memory, map it, grant access), so a session's memory can later be paged out and
 * mapped back at the same address. Allocations are charged to the lease's VRAM quota. Copies read and
 * write straight between the frame / reply buffers and the device; async device→host copies are staged here
 * until the next reply, or until a host function after them on their stream sends them with its RUN message
 * (protocol/SPEC.md, "Replies" and "Callbacks"), in page-locked buffers of the worker where it can (pinstage.c). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define LATER_LIMIT (1ull << 30) /* staged async device→host bytes a client may leave uncollected */
#define CLAIM_MAX (1u << 20)     /* copies one RUN message carries at most (the rest come with the next reply) */

static CUresult current_device(fgs_session *S, CUdevice *dev) { return S->api->cuCtxGetDevice(dev); }

static fgs_alloc *find_alloc(fgs_session *S, CUdeviceptr p, int containing) {
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (a->client_vmm && !containing) continue; /* cuMemFree: not for the client's VMM mappings */
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
    CUdeviceptr ptr = 0;
    res = fgs_memory_alloc(S, (int)dev, size, &ptr, NULL);
    if (res == CUDA_SUCCESS) fg_put_u64(out, ptr);
    return res;
}

CUresult fgs_memory_alloc(fgs_session *S, int dev, uint64_t size, CUdeviceptr *out_ptr, size_t *out_mapped) {
    CUresult res;
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
    if (S->n_allocs == S->cap_allocs) {
        size_t cap = S->cap_allocs ? S->cap_allocs * 2 : 64;
        fgs_alloc *na = (fgs_alloc *)realloc(S->allocs, cap * sizeof *na);
        if (!na) return CUDA_ERROR_OUT_OF_MEMORY;
        S->allocs = na;
        S->cap_allocs = cap;
    }
    res = fgs_charge_dev(S, (int)dev, mapped); /* the lease's quota on this GPU, over its sessions here */
    if (res != CUDA_SUCCESS) return res;
    CUdeviceptr ptr = 0;
    CUmemGenericAllocationHandle h = 0;
    /* In the session's fixed address arena where the driver allows it, so that a parked session finds its
     * addresses free again in a new worker (park.c); a hint the driver does not honour costs nothing. */
    CUdeviceptr hint = S->arena_next && mapped <= S->arena_end - S->arena_next ? S->arena_next : 0;
    int own = fgs_va_take(S, mapped, gran, &ptr) != 0; /* the session's block (va_block.c), else a range of its own */
    res = own ? S->api->cuMemAddressReserve(&ptr, mapped, 0, hint, 0) : CUDA_SUCCESS;
    if (own && res == CUDA_SUCCESS && hint && ptr == hint) S->arena_next += mapped;
    static int told;
    if (own && res == CUDA_SUCCESS && hint && ptr != hint && !told++)
        fgs_log(S, "the driver placed an allocation at 0x%llx, not in the session's address arena (0x%llx): a parked "
                "session may not find its addresses free elsewhere", (unsigned long long)ptr, (unsigned long long)hint);
    if (res != CUDA_SUCCESS) {
        fgs_uncharge_dev(S, (int)dev, mapped);
        return res == CUDA_ERROR_INVALID_VALUE ? CUDA_ERROR_OUT_OF_MEMORY : res;
    }
    /* Shareable as a POSIX file descriptor, so that cuIpcGetMemHandle can export it to the lease's other sessions
     * (ipc.c); a driver that cannot makes it without (IPC of it is then refused). */
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    res = S->api->cuMemCreate(&h, mapped, &prop, 0);
    if (res == CUDA_ERROR_NOT_SUPPORTED || res == CUDA_ERROR_INVALID_VALUE || res == CUDA_ERROR_NOT_PERMITTED) {
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
        res = S->api->cuMemCreate(&h, mapped, &prop, 0);
    }
    if (res != CUDA_SUCCESS) {
        if (!fgs_va_give(S, ptr, mapped)) S->api->cuMemAddressFree(ptr, mapped);
        fgs_uncharge_dev(S, (int)dev, mapped);
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
        if (!fgs_va_give(S, ptr, mapped)) S->api->cuMemAddressFree(ptr, mapped);
        fgs_uncharge_dev(S, (int)dev, mapped);
        return res;
    }
    S->allocs[S->n_allocs++] = (fgs_alloc){ptr, (size_t)size, mapped, h, (int)dev, 0, 0, 0, 0};
    fgs_peer_grant(S, &S->allocs[S->n_allocs - 1]); /* devices with peer access to this one reach it too */
    *out_ptr = ptr;
    if (out_mapped) *out_mapped = mapped;
    return CUDA_SUCCESS;
}

static void release(fgs_session *S, fgs_alloc *a) {
    S->api->cuMemUnmap(a->ptr, a->mapped);
    S->api->cuMemRelease(a->handle);
    if (!fgs_va_give(S, a->ptr, a->mapped)) S->api->cuMemAddressFree(a->ptr, a->mapped);
    fgs_uncharge_dev(S, a->dev, a->mapped);
}

CUresult fgs_cuMemFree_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    int pooled = fgs_mempool_free(S, p); /* memory of a pool (mempool_blocks.c) */
    if (pooled) return pooled > 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    fgs_alloc *a = find_alloc(S, p, 0);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    /* cuMemFree waits for work that may still use the memory; unmapping does not, so wait here. */
    S->api->cuCtxSynchronize();
    return fgs_memory_free_now(S, p);
}

/* Releases one of the session's allocations (not a client VMM mapping) without waiting for anything: the caller
 * knows no queued work uses it any more (mempool_blocks.c: its cuMemFreeAsync completed on its stream). */
CUresult fgs_memory_free_now(fgs_session *S, CUdeviceptr p) {
    fgs_alloc *a = find_alloc(S, p, 0);
    if (!a) return CUDA_ERROR_INVALID_VALUE;
    fgs_ipc_forget(S, a->ptr); /* its IPC token (if any) names nothing from now on */
    release(S, a);
    *a = S->allocs[--S->n_allocs];
    return CUDA_SUCCESS;
}

/* Device `dev` may (on) or may no longer (off) reach the allocation at p from now on (mempool.c: a pool's access
 * for a peer device). Granted now when it is mapped, and by every page-in (fgs_peer_grant); taking access away
 * only stops the grants: what is mapped stays reachable until it is unmapped. */
void fgs_memory_peer(fgs_session *S, CUdeviceptr p, int dev, int on) {
    fgs_alloc *a = find_alloc(S, p, 0);
    if (!a || a->ptr != p || dev < 0 || dev >= 64 || dev == a->dev) return;
    if (!on) {
        a->peers &= ~(1ull << dev);
        return;
    }
    a->peers |= 1ull << dev;
    if (a->handle && !a->paged) fgs_peer_grant(S, a);
}

/* The allocation that starts at p (not a client VMM mapping): its mapped size, or 0 when there is none. */
size_t fgs_memory_mapped_at(fgs_session *S, CUdeviceptr p) {
    fgs_alloc *a = find_alloc(S, p, 0);
    return a && a->ptr == p ? a->mapped : 0;
}

void fgs_memory_release_all(fgs_session *S) {
    if (S->n_allocs) S->api->cuCtxSynchronize();
    for (size_t i = 0; i < S->n_allocs; i++) release(S, &S->allocs[i]);
    S->n_allocs = 0;
    fgs_va_close(S);
}

CUresult fgs_cuMemGetInfo_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)r;
    size_t free_b = 0, total_b = 0;
    CUresult res = S->api->cuMemGetInfo_v2(&free_b, &total_b);
    if (res != CUDA_SUCCESS) return res;
    if (S->vram_quota) {
        uint64_t left = fgs_quota_left(S); /* what the lease's sessions together have not pinned */
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
    uint64_t pb = 0, ps = 0;
    int pooled = fgs_mempool_range(S, p, &pb, &ps); /* a block carved out of a pool's chunk: its own range */
    if (pooled < 0) return CUDA_ERROR_NOT_FOUND;
    if (pooled > 0) {
        fg_put_u64(out, pb);
        fg_put_u64(out, ps);
        return CUDA_SUCCESS;
    }
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
    dst = fgs_park_xlate(S, dst, n); /* a module global that moved when the session was restored */
    return S->api->cuMemcpyHtoD_v2(dst, src, (size_t)n);
}

CUresult fgs_cuMemcpyDtoH_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t src = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (n > FG_CHUNK) return CUDA_ERROR_INVALID_VALUE;
    void *dst = fg_put_space(out, (size_t)n);
    if (!dst) return CUDA_ERROR_OUT_OF_MEMORY;
    return S->api->cuMemcpyDtoH_v2(dst, fgs_park_xlate(S, src, n), (size_t)n);
}

CUresult fgs_cuMemcpyHtoDAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t dst = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    const uint8_t *src = fg_take(r, (size_t)n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    /* The source is the frame buffer (pageable): the driver has consumed it when the call returns. */
    return S->api->cuMemcpyHtoDAsync_v2(fgs_park_xlate(S, dst, n), src, (size_t)n, (CUstream)s);
}

/* ---- staged async device→host copies ----
 * Each cuMemcpyDtoHAsync record gets the next id (S->later_next; the stub counts the same way) and an entry in
 * S->later, even when it fails (then without data: the client is told length 0 and learns the error as the
 * deferred one), so the client never waits for an id that will not come. An entry leaves S->later one way only,
 * under later_mu: taken by send_reply, or claimed by the trampoline of a later host function on its stream and
 * freed once the client answered DONE. No driver call is made with the lock held (a stream synchronisation
 * waits for trampolines, which take it). */

static pthread_mutex_t later_mu = PTHREAD_MUTEX_INITIALIZER; /* one worker process serves one session */

/* The driver treats the NULL stream and CU_STREAM_LEGACY alike. */
static CUstream same_stream(CUstream s) { return s == CU_STREAM_LEGACY ? NULL : s; }

CUresult fgs_cuMemcpyDtoHAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t src = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed || n > FG_CHUNK) return FGS_PROTOCOL_ERROR;
    pthread_mutex_lock(&later_mu);
    int over = S->later_bytes + n > LATER_LIMIT;
    if (!over && S->n_later == S->cap_later) {
        size_t cap = S->cap_later ? S->cap_later * 2 : 32;
        fgs_later *nl = (fgs_later *)realloc(S->later, cap * sizeof *nl);
        if (nl) {
            S->later = nl;
            S->cap_later = cap;
        }
    }
    int room = S->n_later < S->cap_later;
    pthread_mutex_unlock(&later_mu);
    /* Too much left uncollected, or no way to keep the id: the session cannot go on consistently. */
    if (over || !room) return FGS_PROTOCOL_ERROR;
    uint64_t id = S->later_next++;
    void *s = NULL, *stage = NULL;
    struct fgs_pinblk *pin = NULL;
    CUresult res;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) {
        res = CUDA_ERROR_INVALID_HANDLE;
    } else if (!(stage = fgs_stage_get(S, (size_t)n, (CUstream)s, &pin))) { /* page-locked when it can */
        res = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        res = S->api->cuMemcpyDtoHAsync_v2(stage, fgs_park_xlate(S, src, n), (size_t)n, (CUstream)s);
        if (res != CUDA_SUCCESS) { /* nothing was enqueued */
            fgs_stage_put(pin, stage);
            stage = NULL;
            pin = NULL;
        } else if (n) {
            fgs_stage_count(S, pin);
        }
    }
    pthread_mutex_lock(&later_mu); /* only this thread adds: the room found above is still there */
    S->later[S->n_later++] = (fgs_later){stage, (size_t)n, same_stream((CUstream)s), id, 0, 0, pin, 0};
    if (stage) S->later_bytes += n;
    pthread_mutex_unlock(&later_mu);
    return res;
}

int fgs_later_streams(fgs_session *S, CUstream **streams, size_t *n) {
    *streams = NULL;
    *n = 0;
    pthread_mutex_lock(&later_mu);
    CUstream *v = S->n_later ? (CUstream *)malloc(S->n_later * sizeof *v) : NULL;
    int rc = S->n_later && !v ? -1 : 0;
    for (size_t i = 0; v && i < S->n_later; i++) {
        if (!S->later[i].data || S->later[i].settled) continue; /* settled: known complete */
        size_t j = 0;
        while (j < *n && v[j] != S->later[i].stream) j++;
        if (j == *n) v[(*n)++] = S->later[i].stream;
    }
    pthread_mutex_unlock(&later_mu);
    *streams = v;
    return rc;
}

int fgs_later_take(fgs_session *S, fgs_later **list, size_t *n) {
    *list = NULL;
    *n = 0;
    pthread_mutex_lock(&later_mu);
    size_t k = 0;
    for (size_t i = 0; i < S->n_later; i++) k += !S->later[i].claimed;
    fgs_later *v = k ? (fgs_later *)malloc(k * sizeof *v) : NULL;
    if (v) {
        size_t keep = 0;
        for (size_t i = 0; i < S->n_later; i++) {
            if (S->later[i].claimed) {
                S->later[keep++] = S->later[i];
            } else {
                v[(*n)++] = S->later[i];
                if (S->later[i].data) S->later_bytes -= S->later[i].n;
            }
        }
        S->n_later = keep;
    }
    pthread_mutex_unlock(&later_mu);
    *list = v;
    return k && !v ? -1 : 0;
}

void fgs_later_free_list(fgs_later *list, size_t n) { /* delivered: their streams were waited for */
    for (size_t i = 0; i < n; i++) fgs_stage_put(list[i].pin, list[i].data);
    free(list);
}

void fgs_later_settle(fgs_session *S, int one, CUstream stream, int pageable_too) {
    stream = same_stream(stream);
    pthread_mutex_lock(&later_mu);
    uint64_t upto = S->later_next; /* only this thread adds copies */
    CUstream *v = S->n_later ? (CUstream *)malloc(S->n_later * sizeof *v) : NULL;
    size_t ns = 0;
    for (size_t i = 0; v && i < S->n_later; i++) {
        fgs_later *e = &S->later[i];
        if (!e->data || e->settled || e->claimed || (!e->pin && !pageable_too) || (one && e->stream != stream))
            continue; /* (a claimed one completed before its host function ran) */
        size_t j = 0;
        while (j < ns && v[j] != e->stream) j++;
        if (j == ns) v[ns++] = e->stream;
    }
    pthread_mutex_unlock(&later_mu);
    if (!ns) {
        free(v);
        return;
    }
    size_t ok = 0; /* the streams that synchronised, moved to the front */
    CUstreamCaptureMode mode;
    int relaxed = fgs_relax(S, &mode); /* the worker's waits, not the application's (fgs_session.h) */
    for (size_t j = 0; j < ns; j++)
        if (S->api->cuStreamSynchronize(v[j]) == CUDA_SUCCESS) v[ok++] = v[j];
    fgs_unrelax(S, relaxed, mode);
    pthread_mutex_lock(&later_mu);
    for (size_t i = 0; i < S->n_later && S->later[i].id < upto; i++) {
        fgs_later *e = &S->later[i];
        for (size_t j = 0; e->data && (e->pin || pageable_too) && !e->settled && j < ok; j++)
            if (v[j] == e->stream) e->settled = 1;
    }
    pthread_mutex_unlock(&later_mu);
    free(v);
}

size_t fgs_later_claim(fgs_session *S, CUstream stream, uint64_t upto, fgs_later_ref **refs) {
    stream = same_stream(stream);
    *refs = NULL;
    pthread_mutex_lock(&later_mu);
    size_t k = 0;
    for (size_t i = 0; i < S->n_later && S->later[i].id < upto && k < CLAIM_MAX; i++)
        k += !S->later[i].claimed && S->later[i].stream == stream;
    fgs_later_ref *v = k ? (fgs_later_ref *)malloc(k * sizeof *v) : NULL;
    size_t got = 0;
    for (size_t i = 0; v && i < S->n_later && S->later[i].id < upto && got < k; i++) {
        fgs_later *e = &S->later[i];
        if (e->claimed || e->stream != stream) continue;
        e->claimed = 1;
        v[got++] = (fgs_later_ref){e->id, e->data, e->data ? e->n : 0};
    }
    pthread_mutex_unlock(&later_mu);
    *refs = v;
    return got; /* out of memory: none, and the next reply delivers them */
}

void fgs_later_release(fgs_session *S, const fgs_later_ref *refs, size_t n, int delivered) {
    pthread_mutex_lock(&later_mu);
    int drop = delivered || S->later_closed;
    size_t keep = 0, j = 0;
    for (size_t i = 0; i < S->n_later; i++) { /* both in id order: one merge pass */
        fgs_later *e = &S->later[i];
        while (j < n && refs[j].id < e->id) j++;
        int mine = j < n && refs[j].id == e->id && e->claimed;
        if (mine && drop) { /* its host function ran after it on its stream: the copy is complete */
            if (e->data) S->later_bytes -= e->n;
            fgs_stage_put(e->pin, e->data);
            continue;
        }
        if (mine) e->claimed = 0;
        S->later[keep++] = *e;
    }
    S->n_later = keep;
    pthread_mutex_unlock(&later_mu);
}

/* At the session's end. Copies a trampoline has claimed are its to free (it fails soon: the callback connection
 * is shut down first). A copy into page-locked memory is waited for first; one whose stream cannot be waited for
 * keeps its buffer (never reused: the DMA might still write it) until the process exits. */
void fgs_later_free_all(fgs_session *S) {
    fgs_later_settle(S, 0, NULL, 0);
    pthread_mutex_lock(&later_mu);
    S->later_closed = 1;
    size_t keep = 0, kept = 0;
    for (size_t i = 0; i < S->n_later; i++) {
        fgs_later *e = &S->later[i];
        if (e->claimed) {
            S->later[keep++] = *e;
            continue;
        }
        if (e->pin && !e->settled) kept++;
        else fgs_stage_put(e->pin, e->data);
        if (e->data) S->later_bytes -= e->n;
    }
    S->n_later = keep;
    pthread_mutex_unlock(&later_mu);
    if (kept)
        fgs_log(S, "%zu staged async device-to-host copies could not be waited for: their page-locked buffers stay "
                   "untouched until the worker exits", kept);
}

/* Device-to-device copies (and unified cuMemcpy, which the stub sends here only for two device
 * addresses) touch nothing but this session's own allocations: a client address that is not one of them
 * would make the driver read or write the worker's host memory. */
/* A module or library was unloaded: forget every noted global (the live ones are noted again when named). */
void fgs_globals_forget(fgs_session *S) { S->n_globals = 0; }

static int in_session(fgs_session *S, uint64_t p, uint64_t n) {
    fgs_alloc *a = find_alloc(S, p, 1);
    if (!a) a = find_global(S, p);
    return (a && n <= a->ptr + a->size - p) || fgs_ipc_range_ok(S, p, n); /* or memory another session shared */
}

/* For copies other files replay (arrays.c): [p, p + n) lies in one of this session's allocations or globals. */
int fgs_device_range_ok(fgs_session *S, uint64_t p, uint64_t n) { return in_session(S, p, n); }

static CUresult dtod(fgs_session *S, fg_reader *r, int async) {
    uint64_t dst = fg_get_u64(r), src = fg_get_u64(r), n = fg_get_u64(r);
    uint64_t sid = async ? fg_get_u64(r) : 0;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    dst = fgs_park_xlate(S, dst, n);
    src = fgs_park_xlate(S, src, n);
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
