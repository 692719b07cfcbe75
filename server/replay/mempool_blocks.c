/* mempool_blocks.c — stream-ordered allocation (cuMemAllocAsync, cuMemAllocFromPoolAsync, cuMemFreeAsync) over the
 * session's own allocations (memory.c), never the driver's pools: every byte a pool holds is a VMM-backed session
 * allocation, charged to the lease's quota, paged and parked with the rest. The pools themselves are mempool.c's.
 *
 * Allocation: made when the call runs on the node, so the memory is valid at once, on its stream and every other
 * (stricter than the driver's promise, which makes it valid in stream order). A request above MP_SMALL is a
 * session allocation of its own; smaller ones are carved, in MP_UNIT units, out of chunks: MP_CHUNK session
 * allocations the pool shares among them (as the driver's pools share their memory), so many small tensors do not
 * each take a whole allocation granule. Free: the memory stays until the work queued on its stream before the free
 * has completed: an event is recorded on the stream (in the stream's context), and the memory is released once the
 * event completes (checked after each batch), when a synchronisation of its stream or context ends a batch, when an
 * allocation would not fit without it, or before its context goes. Never earlier. A free whose event cannot be
 * recorded waits for its stream at once. Released blocks go back to their chunk, for any stream to reuse (their
 * work is done, so reuse needs no dependency); an empty chunk is kept while its pool holds no more than its release
 * threshold, and given back otherwise, at cuMemPoolTrimTo, or when an allocation would not fit under the quota.
 *
 * On a stream under capture an allocation becomes a graph allocation (mempool_capture.c): carved out of the same
 * pools, with an empty node in the capture's graph that the stub knows as a memory-allocation node
 * (client_stub/graph_mem.c, which also makes the free nodes and keeps the memory while its graphs live). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_mempool.h"

#define POOLS_LIMIT (1u << 20) /* pools a parked state may name */

static mp_alloc *g_allocs;
static size_t g_n_allocs, g_cap_allocs, g_n_pending;
static mp_chunk **g_chunks;
static size_t g_n_chunks, g_cap_chunks;

/* ---- chunks: a bitmap of MP_UNIT units ---- */

static int taken(const mp_chunk *c, size_t i) { return (int)(c->bits[i >> 6] >> (i & 63) & 1u); }

static void mark(mp_chunk *c, size_t first, size_t n, int on) {
    for (size_t i = first; i < first + n; i++) {
        if (on) c->bits[i >> 6] |= 1ull << (i & 63);
        else c->bits[i >> 6] &= ~(1ull << (i & 63));
    }
    if (on) c->used_units += n;
    else c->used_units -= n;
}

/* First fit: n free units in a row. */
static int find_run(const mp_chunk *c, size_t n, size_t *first) {
    size_t run = 0;
    for (size_t i = 0; i < c->n_units; i++) {
        if ((i & 63) == 0 && c->bits[i >> 6] == ~0ull && i + 64 <= c->n_units) { /* a full word */
            run = 0;
            i += 63;
            continue;
        }
        if (taken(c, i)) {
            run = 0;
            continue;
        }
        if (++run == n) {
            *first = i + 1 - n;
            return 1;
        }
    }
    return 0;
}

static void peers_for(fgs_session *S, mp_pool *p, CUdeviceptr ptr) {
    for (int d = 0; d < MP_MAX_DEV; d++)
        if (p->access[d] != CU_MEM_ACCESS_FLAGS_PROT_NONE) fgs_memory_peer(S, ptr, d, 1);
}

/* A chunk the pool holds from now on (its memory is allocated already). */
static mp_chunk *chunk_add(fgs_session *S, mp_pool *p, CUdeviceptr ptr, size_t mapped) {
    if (mp_grow((void **)&g_chunks, &g_cap_chunks, g_n_chunks, sizeof *g_chunks)) return NULL;
    mp_chunk *c = (mp_chunk *)calloc(1, sizeof *c);
    size_t n = mapped / MP_UNIT;
    uint64_t *bits = c ? (uint64_t *)calloc((n + 63) / 64, sizeof *bits) : NULL;
    if (!bits) {
        free(c);
        return NULL;
    }
    *c = (mp_chunk){ptr, mapped, p, bits, n, 0};
    g_chunks[g_n_chunks++] = c;
    p->reserved += mapped;
    p->n_held++;
    if (p->reserved > p->reserved_high) p->reserved_high = p->reserved;
    peers_for(S, p, ptr);
    return c;
}

static void chunk_release(fgs_session *S, mp_chunk *c) {
    mp_pool *p = c->pool;
    for (size_t i = 0; i < g_n_chunks; i++)
        if (g_chunks[i] == c) g_chunks[i] = g_chunks[--g_n_chunks];
    p->reserved -= c->mapped;
    p->n_held--;
    fgs_memory_free_now(S, c->ptr);
    free(c->bits);
    free(c);
    if (p->destroyed && !p->n_held) mp_pool_free(p);
}

static mp_chunk *chunk_at(CUdeviceptr ptr) {
    for (size_t i = 0; i < g_n_chunks; i++)
        if (g_chunks[i]->ptr == ptr) return g_chunks[i];
    return NULL;
}

void mp_trim(fgs_session *S, mp_pool *p, uint64_t keep) {
    for (size_t i = g_n_chunks; i-- > 0;) {
        if (i >= g_n_chunks) continue;
        mp_chunk *c = g_chunks[i];
        if (c->pool != p || c->used_units || p->reserved <= keep) continue;
        int last = p->destroyed && p->n_held == 1;
        chunk_release(S, c);
        if (last) return; /* the destroyed pool went with its last chunk */
    }
}

/* ---- releasing ---- */

static mp_alloc *find(CUdeviceptr ptr) {
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].ptr == ptr) return &g_allocs[i];
    return NULL;
}

/* The entry goes, and its memory: back to its chunk, or released (a whole allocation). */
static void release(fgs_session *S, mp_alloc *a) {
    if (a->ev) S->api->cuEventDestroy_v2(a->ev);
    mp_alloc x = *a;
    *a = g_allocs[--g_n_allocs];
    if (x.pending) g_n_pending--;
    else if (x.pool) x.pool->used -= x.bytes;
    if (x.chunk) {
        mark(x.chunk, x.first, x.bytes / MP_UNIT, 0);
        mp_pool *p = x.pool;
        if (!x.chunk->used_units && (p->destroyed || p->reserved > p->threshold)) chunk_release(S, x.chunk);
        return;
    }
    fgs_memory_free_now(S, x.ptr);
    if (!x.pool) return;
    x.pool->reserved -= x.bytes;
    x.pool->n_held--;
    if (x.pool->destroyed && !x.pool->n_held) mp_pool_free(x.pool);
}

/* Releases the pending frees that are done: all of them (wait_all), those on `stream` (wait_stream: its
 * synchronisation just returned), or those whose event reports completion. */
void mp_reap(fgs_session *S, int wait_all, int wait_stream, CUstream stream) {
    if (!g_n_pending || fgs_is_paged(S)) return; /* paged: released after the next page-in */
    /* The worker's own queries, not the application's: a global-mode stream capture under way must not count
     * them as calls made during it (the thread's mode is relaxed while they run, then restored). */
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    int relaxed = S->api->cuThreadExchangeStreamCaptureMode &&
                  S->api->cuThreadExchangeStreamCaptureMode(&mode) == CUDA_SUCCESS;
    for (size_t i = g_n_allocs; i-- > 0;) {
        if (i >= g_n_allocs) continue;
        mp_alloc *a = &g_allocs[i];
        if (!a->pending) continue;
        if (a->ev) {
            CUresult q;
            if (wait_all || (wait_stream && a->stream == stream)) q = S->api->cuEventSynchronize(a->ev);
            else q = S->api->cuEventQuery(a->ev);
            if (q != CUDA_SUCCESS) continue; /* not done, or it cannot tell (no context current): kept */
        }
        release(S, a);
    }
    if (relaxed) S->api->cuThreadExchangeStreamCaptureMode(&mode);
}

/* Before an allocation fails for the quota: what pending frees and empty chunks give back. */
static void relieve(fgs_session *S) {
    mp_reap(S, 1, 0, NULL);
    for (size_t i = g_n_chunks; i-- > 0;)
        if (i < g_n_chunks && !g_chunks[i]->used_units) chunk_release(S, g_chunks[i]);
}

void fgs_mempool_reap(fgs_session *S, unsigned last_op, const uint8_t *args, size_t len) {
    if (!g_n_pending) return;
    if (last_op == FG_OP_cuCtxSynchronize) {
        mp_reap(S, 1, 0, NULL);
        return;
    }
    void *s = NULL;
    uint64_t sid = 0;
    if (last_op == FG_OP_cuStreamSynchronize && len >= 8) {
        memcpy(&sid, args, 8);
        if (fgs_handle_get(S, FGH_STREAM, sid, &s) == 0) {
            mp_reap(S, 0, 1, (CUstream)s);
            return;
        }
    }
    mp_reap(S, 0, 0, NULL);
}

/* Before a context goes (its events go with it): its work done, every pending free is released. */
void fgs_mempool_drain(fgs_session *S) {
    if (!g_n_pending || fgs_is_paged(S)) return;
    S->api->cuCtxSynchronize();
    for (size_t i = g_n_allocs; i-- > 0;) {
        if (i >= g_n_allocs || !g_allocs[i].pending) continue;
        if (g_allocs[i].ev && S->api->cuEventSynchronize(g_allocs[i].ev) != CUDA_SUCCESS)
            S->api->cuStreamSynchronize(g_allocs[i].stream);
        release(S, &g_allocs[i]);
    }
}

int fgs_mempool_free(fgs_session *S, CUdeviceptr p) {
    mp_alloc *a = find(p);
    if (!a) return chunk_at(p) ? -1 : 0; /* a chunk is not the application's to free */
    if (a->pending) return -1;
    if (a->chunk) { /* cuMemFree waits for the work that may use it */
        S->api->cuCtxSynchronize();
        release(S, a);
        return 1;
    }
    mp_pool *pool = a->pool; /* a whole allocation: memory.c frees it */
    pool->used -= a->bytes;
    pool->reserved -= a->bytes;
    pool->n_held--;
    *a = g_allocs[--g_n_allocs];
    if (pool->destroyed && !pool->n_held) mp_pool_free(pool);
    return 0;
}

int fgs_mempool_range(fgs_session *S, CUdeviceptr p, uint64_t *base, uint64_t *size) {
    (void)S;
    for (size_t i = 0; i < g_n_allocs; i++) {
        const mp_alloc *a = &g_allocs[i];
        if (a->chunk && !a->pending && p >= a->ptr && p - a->ptr < a->bytes) {
            *base = a->ptr;
            *size = a->req;
            return 1;
        }
    }
    for (size_t i = 0; i < g_n_chunks; i++)
        if (p >= g_chunks[i]->ptr && p - g_chunks[i]->ptr < g_chunks[i]->mapped) return -1; /* freed, or never given */
    return 0;
}

int fgs_mempool_holds(fgs_session *S, CUdeviceptr p) {
    (void)S;
    for (size_t i = 0; i < g_n_chunks; i++)
        if (p >= g_chunks[i]->ptr && p - g_chunks[i]->ptr < g_chunks[i]->mapped) return 1;
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].pool && p >= g_allocs[i].ptr && p - g_allocs[i].ptr < g_allocs[i].bytes) return 1;
    return 0;
}

void mp_access_changed(fgs_session *S, mp_pool *p, int dev) {
    int on = p->access[dev] != CU_MEM_ACCESS_FLAGS_PROT_NONE;
    for (size_t i = 0; i < g_n_chunks; i++)
        if (g_chunks[i]->pool == p) fgs_memory_peer(S, g_chunks[i]->ptr, dev, on);
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].pool == p && !g_allocs[i].chunk) fgs_memory_peer(S, g_allocs[i].ptr, dev, on);
}

void mp_destroyed(fgs_session *S, mp_pool *p) {
    if (!p->n_held) mp_pool_free(p);
    else mp_trim(S, p, 0); /* frees p with its last chunk, if chunks were all it held */
}

void mp_blocks_close(fgs_session *S) {
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].ev) S->api->cuEventDestroy_v2(g_allocs[i].ev);
    g_n_allocs = g_n_pending = 0;
    for (size_t i = 0; i < g_n_chunks; i++) {
        free(g_chunks[i]->bits);
        free(g_chunks[i]);
    }
    g_n_chunks = 0;
}

/* ---- allocation ---- */

static CUresult alloc_mem(fgs_session *S, mp_pool *p, uint64_t size, CUdeviceptr *ptr, size_t *mapped) {
    if (p->max_size && (size > p->max_size || p->reserved > p->max_size - size)) {
        mp_reap(S, 1, 0, NULL); /* what its pending frees and empty chunks give back first */
        mp_trim(S, p, 0);
        if (size > p->max_size || p->reserved > p->max_size - size) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = fgs_memory_alloc(S, p->dev, size, ptr, mapped);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && (g_n_pending || g_n_chunks)) { /* the quota may fit after these */
        relieve(S);
        r = fgs_memory_alloc(S, p->dev, size, ptr, mapped);
    }
    return r;
}

CUresult mp_alloc_ptr(fgs_session *S, mp_pool *p, uint64_t size, CUdeviceptr *out) {
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (mp_grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) return CUDA_ERROR_OUT_OF_MEMORY;
    mp_alloc a;
    memset(&a, 0, sizeof a);
    a.req = size;
    a.pool = p;
    if (size <= MP_SMALL && !(p->max_size && p->max_size < MP_CHUNK)) { /* (a cap below a chunk: on its own) */
        size_t units = (size_t)((size + MP_UNIT - 1) / MP_UNIT), first = 0;
        mp_chunk *c = NULL;
        for (size_t i = 0; i < g_n_chunks && !c; i++)
            if (g_chunks[i]->pool == p && g_chunks[i]->n_units - g_chunks[i]->used_units >= units &&
                find_run(g_chunks[i], units, &first))
                c = g_chunks[i];
        if (!c) {
            CUdeviceptr cp = 0;
            size_t cm = 0;
            CUresult r = alloc_mem(S, p, MP_CHUNK, &cp, &cm);
            if (r != CUDA_SUCCESS) return r;
            if (!(c = chunk_add(S, p, cp, cm))) {
                fgs_memory_free_now(S, cp);
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            first = 0;
        }
        mark(c, first, units, 1);
        a.ptr = c->ptr + first * MP_UNIT;
        a.bytes = units * MP_UNIT;
        a.chunk = c;
        a.first = first;
    } else {
        CUresult r = alloc_mem(S, p, size, &a.ptr, &a.bytes);
        if (r != CUDA_SUCCESS) return r;
        p->reserved += a.bytes;
        p->n_held++;
        peers_for(S, p, a.ptr);
    }
    g_allocs[g_n_allocs++] = a;
    p->used += a.bytes;
    if (p->used > p->used_high) p->used_high = p->used;
    if (p->reserved > p->reserved_high) p->reserved_high = p->reserved;
    *out = a.ptr;
    return CUDA_SUCCESS;
}

/* The reply of cuMemAllocAsync and cuMemAllocFromPoolAsync: u64 address, then u64 graph node id and u64 graph id
 * (0 unless the stream is under capture: mempool_capture.c), u64 device, and u64 the pool's virtual id (0 under
 * capture, and for a device's default pool while the client has not been told its id: cuPointerGetAttribute's
 * MEMPOOL_HANDLE then asks for the default pool). Ids are never handed out here, so the creation journal keeps
 * no allocation for them. */
static CUresult alloc_on(fgs_session *S, mp_pool *p, CUstream s, int capturing, uint64_t size, fg_writer *out) {
    if (capturing) return mp_captured_alloc(S, p, s, size, out);
    CUdeviceptr ptr = 0;
    CUresult r = mp_alloc_ptr(S, p, size, &ptr);
    if (r != CUDA_SUCCESS) return r;
    fg_put_u64(out, ptr);
    for (int i = 0; i < 2; i++) fg_put_u64(out, 0);
    fg_put_u64(out, (uint64_t)p->dev);
    fg_put_u64(out, p->id);
    return CUDA_SUCCESS;
}

/* A block handed out just now goes back at once (its capture could not take it). */
void mp_release_ptr(fgs_session *S, CUdeviceptr ptr) {
    mp_alloc *a = find(ptr);
    if (a && !a->pending) release(S, a);
}

/* An event recorded on s now, made in s's own context (NULL: none could be). */
static CUevent free_event(fgs_session *S, CUstream s) {
    CUcontext ctx = NULL, cur = NULL, popped;
    int pushed = 0;
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD && S->api->cuStreamGetCtx &&
        S->api->cuStreamGetCtx(s, &ctx) == CUDA_SUCCESS && ctx && S->api->cuCtxGetCurrent(&cur) == CUDA_SUCCESS &&
        ctx != cur)
        pushed = S->api->cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS;
    CUevent ev = NULL;
    if (S->api->cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) ev = NULL;
    if (ev && S->api->cuEventRecord(ev, s) != CUDA_SUCCESS) {
        S->api->cuEventDestroy_v2(ev);
        ev = NULL;
    }
    if (pushed) S->api->cuCtxPopCurrent_v2(&popped);
    return ev;
}

/* The stream, and whether it is under capture (an invalidated capture refuses the call, as the driver does). */
static CUresult stream_of(fgs_session *S, uint64_t sid, CUstream *s, int *capturing) {
    void *real = NULL;
    if (fgs_handle_get(S, FGH_STREAM, sid, &real)) return CUDA_ERROR_INVALID_HANDLE;
    *s = (CUstream)real;
    *capturing = 0;
    CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
    if (S->api->cuStreamIsCapturing && S->api->cuStreamIsCapturing(*s, &cs) == CUDA_SUCCESS &&
        cs != CU_STREAM_CAPTURE_STATUS_NONE) {
        if (cs != CU_STREAM_CAPTURE_STATUS_ACTIVE) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        *capturing = 1;
    }
    return CUDA_SUCCESS;
}

/* The device the stream's work runs on (the current context's for the NULL and per-thread streams). On a
 * capturing stream, cuStreamGetDevice invalidates the capture (H100, driver 580, in every mode: bench/probe_capture.sh),
 * so there the device comes from the stream's context, which leaves the capture alone. */
static CUresult stream_device(fgs_session *S, CUstream s, int capturing, int *dev) {
    CUdevice d = 0;
    CUresult r;
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD) {
        if (!capturing && S->api->cuStreamGetDevice && S->api->cuStreamGetDevice(s, &d) == CUDA_SUCCESS) {
            *dev = (int)d;
            return CUDA_SUCCESS;
        }
        CUcontext ctx = NULL;
        r = S->api->cuStreamGetCtx ? S->api->cuStreamGetCtx(s, &ctx) : CUDA_ERROR_NOT_SUPPORTED;
        if (r == CUDA_SUCCESS && ctx && S->api->cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS) {
            r = S->api->cuCtxGetDevice(&d);
            CUcontext popped;
            S->api->cuCtxPopCurrent_v2(&popped);
            if (r == CUDA_SUCCESS) *dev = (int)d;
            return r;
        }
    }
    r = S->api->cuCtxGetDevice(&d);
    if (r == CUDA_SUCCESS) *dev = (int)d;
    return r;
}

/* Diagnostics for the GPU: the capture read active a moment ago; if this step's calls invalidated it, say so once. */
static void capture_still_active(fgs_session *S, CUstream s, const char *step) {
    static int told;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    if (!told && S->api->cuStreamIsCapturing && S->api->cuStreamIsCapturing(s, &st) == CUDA_SUCCESS &&
        st != CU_STREAM_CAPTURE_STATUS_ACTIVE && !told++)
        fgs_log(S, "a stream capture was invalidated while %s for a stream-ordered allocation", step);
}

CUresult fgs_cuMemAllocAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUstream s = NULL;
    int dev = 0, capturing = 0;
    CUresult res = stream_of(S, sid, &s, &capturing);
    if (res == CUDA_SUCCESS) res = stream_device(S, s, capturing, &dev);
    if (res == CUDA_SUCCESS && capturing) capture_still_active(S, s, "finding the stream's device");
    if (res == CUDA_SUCCESS) res = mp_check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mp_pool *p = mp_current(dev);
    return p ? alloc_on(S, p, s, capturing, size, out) : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult fgs_cuMemAllocFromPoolAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), pid = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mp_pool *p = mp_pool_of(S, pid);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUstream s = NULL;
    int capturing = 0;
    CUresult res = stream_of(S, sid, &s, &capturing);
    return res == CUDA_SUCCESS ? alloc_on(S, p, s, capturing, size, out) : res;
}

CUresult fgs_cuMemFreeAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t ptr = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUstream s = NULL;
    int capturing = 0;
    CUresult res = stream_of(S, sid, &s, &capturing);
    if (res != CUDA_SUCCESS) return res;
    /* Under capture the stub adds a free node for a graph allocation (client_stub/graph_mem.c); anything else
     * is not a graph allocation, which the driver requires there. */
    if (capturing) return CUDA_ERROR_INVALID_VALUE;
    mp_alloc *a = find(ptr);
    if (a && a->pending) return CUDA_ERROR_INVALID_VALUE; /* freed twice */
    if (!a) { /* a cuMemAlloc allocation: freed in stream order too */
        size_t mapped = chunk_at(ptr) ? 0 : fgs_memory_mapped_at(S, ptr);
        if (!mapped) return CUDA_ERROR_INVALID_VALUE;
        if (mp_grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) return CUDA_ERROR_OUT_OF_MEMORY;
        a = &g_allocs[g_n_allocs++];
        memset(a, 0, sizeof *a);
        a->ptr = ptr;
        a->req = a->bytes = mapped;
    }
    a->pending = 1;
    g_n_pending++;
    if (a->pool) a->pool->used -= a->bytes;
    a->stream = s;
    a->ev = free_event(S, s);
    if (!a->ev) { /* nothing marks the point on the stream: wait for the stream itself, then release */
        if (S->api->cuStreamSynchronize(s) != CUDA_SUCCESS) S->api->cuCtxSynchronize();
        release(S, a);
    }
    return CUDA_SUCCESS;
}

/* ---- parking ----
 * u32 pools, each: u64 id (0: none handed out, or destroyed), u32 dev, u32 flags (1 default, 2 destroyed),
 *   u64 used_high, u64 reserved_high, u64 devices given read access, u64 devices given read-write access;
 * u32 chunks, each: u64 ptr, u32 pool index;
 * u32 allocations, each: u64 ptr, u64 requested size, u32 pool index (UINT32_MAX: none), u32 chunk index
 *   (UINT32_MAX: a whole allocation), u32 pending.
 * A pending free is released after the restored session's first batch (its stream's work was done before the
 * session was paged out). */

static uint32_t index_of(const void *x, void *const *v, uint32_t n) {
    for (uint32_t i = 0; x && i < n; i++)
        if (v[i] == x) return i;
    return UINT32_MAX;
}

void fgs_mempool_put(fgs_session *S, fg_writer *w) {
    (void)S;
    mp_pool **v = (mp_pool **)malloc((MP_MAX_DEV + mp_n_pools + 1) * sizeof *v);
    if (!v || mp_n_pools > POOLS_LIMIT) {
        w->failed = 1; /* the park fails (the state cannot be written); the session goes on */
        free(v);
        return;
    }
    uint32_t n = 0;
    for (int d = 0; d < MP_MAX_DEV; d++)
        if (mp_defaults[d]) v[n++] = mp_defaults[d];
    for (size_t i = 0; i < mp_n_pools; i++) v[n++] = mp_pools[i];
    fg_put_u32(w, n);
    for (uint32_t i = 0; i < n; i++) {
        fg_put_u64(w, v[i]->id);
        fg_put_u32(w, (uint32_t)v[i]->dev);
        fg_put_u32(w, (uint32_t)(v[i]->is_default | (v[i]->destroyed << 1)));
        fg_put_u64(w, v[i]->used_high);
        fg_put_u64(w, v[i]->reserved_high);
        uint64_t rd = 0, rw = 0;
        for (int d = 0; d < MP_MAX_DEV; d++) {
            if (v[i]->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READ) rd |= 1ull << d;
            if (v[i]->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) rw |= 1ull << d;
        }
        fg_put_u64(w, rd);
        fg_put_u64(w, rw);
    }
    fg_put_u32(w, (uint32_t)g_n_chunks);
    for (size_t i = 0; i < g_n_chunks; i++) {
        fg_put_u64(w, g_chunks[i]->ptr);
        fg_put_u32(w, index_of(g_chunks[i]->pool, (void *const *)v, n));
    }
    fg_put_u32(w, (uint32_t)g_n_allocs);
    for (size_t i = 0; i < g_n_allocs; i++) {
        fg_put_u64(w, g_allocs[i].ptr);
        fg_put_u64(w, g_allocs[i].req);
        fg_put_u32(w, index_of(g_allocs[i].pool, (void *const *)v, n));
        fg_put_u32(w, index_of(g_allocs[i].chunk, (void *const *)g_chunks, (uint32_t)g_n_chunks));
        fg_put_u32(w, (uint32_t)g_allocs[i].pending);
    }
    free(v);
}

static int get_pools(fgs_session *S, fg_reader *r, mp_pool **v, uint32_t n) {
    for (uint32_t i = 0; i < n && !r->failed; i++) {
        uint64_t id = fg_get_u64(r);
        uint32_t dev = fg_get_u32(r), flags = fg_get_u32(r);
        uint64_t uh = fg_get_u64(r), rh = fg_get_u64(r), rd = fg_get_u64(r), rw = fg_get_u64(r);
        if (r->failed || dev >= MP_MAX_DEV) return -1;
        mp_pool *p = NULL;
        if (id) p = mp_pool_of(S, id); /* the journal made it again, with its id */
        else if (flags & 1) p = mp_default_pool((int)dev);
        else if (flags & 2) p = mp_add_destroyed((int)dev); /* destroyed, still holding memory */
        if (!p || p->dev != (int)dev) return -1;
        p->used_high = uh;
        p->reserved_high = rh;
        for (int d = 0; d < MP_MAX_DEV; d++)
            p->access[d] = (rw >> d & 1u)   ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                           : (rd >> d & 1u) ? CU_MEM_ACCESS_FLAGS_PROT_READ
                                            : CU_MEM_ACCESS_FLAGS_PROT_NONE;
        v[i] = p;
    }
    return r->failed ? -1 : 0;
}

int fgs_mempool_get(fgs_session *S, fg_reader *r, char *err, size_t errlen) {
    uint32_t n = fg_get_u32(r);
    if (r->failed || n > MP_MAX_DEV + POOLS_LIMIT) {
        snprintf(err, errlen, "the parked state is malformed (memory pools)");
        return -1;
    }
    mp_pool **v = (mp_pool **)calloc(n + 1, sizeof *v);
    int rc = !v || get_pools(S, r, v, n) ? -1 : 0;
    const char *why = "a memory pool of the session did not come back";
    uint32_t nc = rc ? 0 : fg_get_u32(r);
    for (uint32_t i = 0; i < nc && !rc && !r->failed; i++) {
        uint64_t ptr = fg_get_u64(r);
        uint32_t pi = fg_get_u32(r);
        size_t mapped = r->failed ? 0 : fgs_memory_mapped_at(S, ptr);
        if (!mapped || pi >= n || !chunk_add(S, v[pi], ptr, mapped)) {
            why = "a memory pool's chunk did not come back";
            rc = -1;
        }
    }
    uint32_t na = rc ? 0 : fg_get_u32(r);
    for (uint32_t i = 0; i < na && !rc && !r->failed; i++) {
        uint64_t ptr = fg_get_u64(r), req = fg_get_u64(r);
        uint32_t pi = fg_get_u32(r), ci = fg_get_u32(r), pending = fg_get_u32(r);
        why = "a stream-ordered allocation of the session did not come back";
        if (r->failed || (pi != UINT32_MAX && pi >= n) || (ci != UINT32_MAX && (ci >= g_n_chunks || pi == UINT32_MAX)) ||
            !req || mp_grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) {
            rc = -1;
            break;
        }
        mp_alloc a;
        memset(&a, 0, sizeof a);
        a.ptr = ptr;
        a.req = req;
        a.pool = pi == UINT32_MAX ? NULL : v[pi];
        a.pending = pending ? 1 : 0;
        if (ci != UINT32_MAX) {
            mp_chunk *c = g_chunks[ci];
            size_t units = (size_t)((req + MP_UNIT - 1) / MP_UNIT), first = (size_t)((ptr - c->ptr) / MP_UNIT);
            if (c->pool != a.pool || ptr < c->ptr || (ptr - c->ptr) % MP_UNIT || req > MP_SMALL ||
                first + units > c->n_units) {
                rc = -1;
                break;
            }
            for (size_t k = first; k < first + units && !rc; k++) rc = taken(c, k) ? -1 : 0;
            if (rc) break;
            mark(c, first, units, 1);
            a.chunk = c;
            a.first = first;
            a.bytes = units * MP_UNIT;
        } else {
            a.bytes = fgs_memory_mapped_at(S, ptr);
            if (!a.bytes || chunk_at(ptr)) {
                rc = -1;
                break;
            }
            if (a.pool) {
                a.pool->reserved += a.bytes;
                a.pool->n_held++;
                peers_for(S, a.pool, ptr); /* granted again by the page-in that maps it */
            }
        }
        if (a.pending) g_n_pending++;
        else if (a.pool) a.pool->used += a.bytes;
        g_allocs[g_n_allocs++] = a;
    }
    free(v);
    if (!rc && r->failed) {
        why = "the parked state is malformed (memory pools)";
        rc = -1;
    }
    if (rc) snprintf(err, errlen, "%s", why);
    return rc;
}
