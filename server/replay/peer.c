/* peer.c — peer access between the GPUs of one session (a lease with several GPUs sees exactly those, as ordinals
 * 0..n-1: server/node_agent.py).
 *
 * Natively, cuCtxEnablePeerAccess lets the current context reach every allocation of the peer context's device,
 * past and future. The session's device memory is VMM memory (memory.c: reserve + create + map, so it can be
 * paged), and VMM mappings are reachable only from the devices cuMemSetAccess names, whatever peer access says. So
 * enabling peer access here does what the driver does (the real call: its checks, its answer, and the legacy
 * memory it covers, module globals) and then grants the current device read-write access to each of the peer
 * device's allocations, and to every later one (fgs_peer_grant, called by memory.c). Disabling takes the grants
 * back. Each allocation remembers the peers granted (fgs_alloc.peers), so a page-in that maps it again
 * (paging.c) grants them again. The application's own VMM mappings keep the access its cuMemSetAccess gave them
 * (vmm.c notes the peers here so a page-in gives it back; read-only grants come back read-write).
 *
 * cuMemcpyPeer[Async] go to the driver once both ranges are known to be the session's own memory and both
 * contexts its own. One worker serves one session, so the enabled pairs are kept in this file. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_DEV 64

/* on[d]: the devices (bits) whose memory device d has been given peer access to. */
static uint64_t on[MAX_DEV];

static CUresult ctx_device(fgs_session *S, CUcontext ctx, CUdevice *dev) {
    CUcontext was = NULL;
    CUresult res = S->api->cuCtxPushCurrent_v2(ctx);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuCtxGetDevice(dev);
    S->api->cuCtxPopCurrent_v2(&was);
    return res;
}

static CUresult set_access(fgs_session *S, fgs_alloc *a, int dev, CUmemAccess_flags flags) {
    CUmemAccessDesc d;
    memset(&d, 0, sizeof d);
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = dev;
    d.flags = flags;
    return S->api->cuMemSetAccess(a->ptr, a->mapped, &d, 1);
}

void fgs_peer_grant(fgs_session *S, fgs_alloc *a) {
    if (a->dev < 0 || a->dev >= MAX_DEV) return;
    uint64_t want = a->peers;
    for (int d = 0; d < MAX_DEV; d++)
        if (d != a->dev && (on[d] >> a->dev & 1u) && !a->client_vmm) want |= 1ull << d;
    for (int d = 0; d < MAX_DEV; d++) {
        if (!(want >> d & 1u)) continue;
        CUresult res = set_access(S, a, d, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
        if (res == CUDA_SUCCESS) a->peers |= 1ull << d;
        else fgs_log(S, "could not give device %d access to 0x%llx (peer access): CUDA error %d", d,
                     (unsigned long long)a->ptr, (int)res);
    }
}

void fgs_peer_note_access(fgs_session *S, uint64_t p, uint64_t n, const CUmemAccessDesc *d, size_t count) {
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (!a->client_vmm || a->ptr < p || a->ptr - p >= n) continue;
        for (size_t k = 0; k < count; k++) {
            int dev = d[k].location.id;
            if (dev < 0 || dev >= MAX_DEV || dev == a->dev) continue;
            if (d[k].flags == CU_MEM_ACCESS_FLAGS_PROT_NONE) a->peers &= ~(1ull << dev);
            else a->peers |= 1ull << dev;
        }
    }
}

static CUresult peer_pair(fgs_session *S, uint64_t id, CUcontext *peer, CUdevice *cur, CUdevice *pdev) {
    void *ctx;
    if (id == 0 || fgs_handle_get(S, FGH_CONTEXT, id, &ctx) || !ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *peer = (CUcontext)ctx;
    CUresult res = S->api->cuCtxGetDevice(cur);
    if (res == CUDA_SUCCESS) res = ctx_device(S, *peer, pdev);
    if (res == CUDA_SUCCESS && (*cur < 0 || *cur >= MAX_DEV || *pdev < 0 || *pdev >= MAX_DEV))
        res = CUDA_ERROR_INVALID_DEVICE;
    return res;
}

int fgs_peer_any(void) {
    for (int d = 0; d < MAX_DEV; d++)
        if (on[d]) return 1;
    return 0;
}

CUresult fgs_cuCtxEnablePeerAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    uint32_t flags = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuCtxEnablePeerAccess) return fgs_missing(S, "cuCtxEnablePeerAccess");
    CUcontext peer;
    CUdevice cur, pdev;
    CUresult res = peer_pair(S, id, &peer, &cur, &pdev);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuCtxEnablePeerAccess(peer, flags);
    if (res != CUDA_SUCCESS) return res;
    on[cur] |= 1ull << pdev;
    for (size_t i = 0; i < S->n_allocs; i++)
        if (S->allocs[i].dev == pdev && S->allocs[i].handle && !S->allocs[i].client_vmm) fgs_peer_grant(S, &S->allocs[i]);
    return CUDA_SUCCESS;
}

CUresult fgs_cuCtxDisablePeerAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuCtxDisablePeerAccess) return fgs_missing(S, "cuCtxDisablePeerAccess");
    CUcontext peer;
    CUdevice cur, pdev;
    CUresult res = peer_pair(S, id, &peer, &cur, &pdev);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuCtxDisablePeerAccess(peer);
    if (res != CUDA_SUCCESS) return res;
    on[cur] &= ~(1ull << pdev);
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (a->dev != pdev || a->client_vmm || !(a->peers >> cur & 1u)) continue;
        a->peers &= ~(1ull << cur);
        if (a->handle && set_access(S, a, cur, CU_MEM_ACCESS_FLAGS_PROT_NONE) != CUDA_SUCCESS) {
            static int told;
            if (!told++)
                fgs_log(S, "the driver kept a peer device's access to an allocation after cuCtxDisablePeerAccess "
                        "(it refuses to take VMM access back): kernels there may still reach it");
        }
    }
    return CUDA_SUCCESS;
}

static CUresult copy_peer(fgs_session *S, fg_reader *r, int async) {
    uint64_t dst = fg_get_u64(r), dctx = fg_get_u64(r), src = fg_get_u64(r), sctx = fg_get_u64(r);
    uint64_t n = fg_get_u64(r);
    uint64_t sid = async ? fg_get_u64(r) : 0;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *dc, *sc, *s = NULL;
    if (fgs_handle_get(S, FGH_CONTEXT, dctx, &dc) || !dc || fgs_handle_get(S, FGH_CONTEXT, sctx, &sc) || !sc)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (async && fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    dst = fgs_park_xlate(S, dst, n);
    src = fgs_park_xlate(S, src, n);
    if (!fgs_device_range_ok(S, dst, n) || !fgs_device_range_ok(S, src, n)) return CUDA_ERROR_INVALID_VALUE;
    if (!async) {
        if (!S->api->cuMemcpyPeer) return fgs_missing(S, "cuMemcpyPeer");
        return S->api->cuMemcpyPeer(dst, (CUcontext)dc, src, (CUcontext)sc, (size_t)n);
    }
    if (!S->api->cuMemcpyPeerAsync) return fgs_missing(S, "cuMemcpyPeerAsync");
    return S->api->cuMemcpyPeerAsync(dst, (CUcontext)dc, src, (CUcontext)sc, (size_t)n, (CUstream)s);
}

CUresult fgs_cuMemcpyPeer(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return copy_peer(S, r, 0); }
CUresult fgs_cuMemcpyPeerAsync(fgs_session *S, fg_reader *r, fg_writer *out) { (void)out; return copy_peer(S, r, 1); }
