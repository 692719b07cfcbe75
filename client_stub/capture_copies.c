/* capture_copies.c — async copies between the application's host memory and the device made on a stream under
 * capture (cuMemcpyHtoDAsync_v2, cuMemcpyDtoHAsync_v2, and cuMemcpyAsync, cuMemcpy2DAsync_v2, cuMemcpy3DAsync_v2
 * and the batched copies through them).
 *
 * The node cannot reach the application's host memory, and bytes sent with the call would be the graph's forever.
 * So while any capture is under way, such a copy first asks the node whether its stream captures (one round trip;
 * nothing is asked when no capture runs). If it does, the host range the copy touches gets a device shadow, and the
 * stream gets a device-to-device copy instead (captured as a device-to-device memcpy node): host→device copies
 * from the shadow, which each launch fills from the host first; device→host copies into it, and each launch copies
 * it back to the host after the graph, on the launch's stream (a shadow whose copy leaves gaps, a wide pitch, is
 * filled first too, so the gaps keep the host's bytes). These are graph_build.c's shadows: bound at once to the
 * capture's graph (its id is the one cuStreamEndCapture hands out, and several streams joined into one capture by
 * events share it), then shared by clones, child-graph parents and executables, and freed with the last of them.
 *
 * Captures that hold shadows are listed here by capture id and graph, with a stream they were seen on. When
 * a capture fails (cuStreamEndCapture with an error; capture.c calls fgc_capture_copies_ended), its shadows are
 * freed, unless it captured into the application's graph, which keeps its nodes. A capture whose stream was
 * destroyed, or that ended without the stub seeing it, is found the next time a copy is captured or a capture
 * ends (its stream no longer captures under that id), and its shadows are freed then. A client killed mid-capture
 * leaves nothing: its worker frees all of its memory.
 *
 * Left as they were: host memory in the shared-memory region (the node's DMA reads and writes the application's
 * registered pages, so the captured node is already the application's memory) and mapped or managed memory with
 * a device mirror (copied on the device).
 *
 * Allocation during capture: the driver counts cuMemAlloc (and the VMM calls the worker makes for it) as an unsafe
 * call, which a global-mode capture refuses and is invalidated by. A shadow is allocated with the thread's capture
 * mode relaxed on the node: the stub exchanges it (cuThreadExchangeStreamCaptureMode, forwarded while a capture
 * runs), allocates, and exchanges the old mode back; freeing does the same. That costs two more round trips per
 * captured copy, paid once at capture time, and needs no new protocol operation; the shadow is an ordinary
 * allocation of the session, so the lease's quota counts it. */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"
#include "fgc_transport.h"

#define MAX_SEQS 256

typedef struct {
    uint64_t cap_id, graph;
    CUstream s; /* a stream of the capture, asked later whether it still captures under cap_id */
} seq;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static seq seqs[MAX_SEQS];
static size_t n_seqs;

/* ---- the shadows' memory ---- */

static int relax(CUstreamCaptureMode *old) {
    if (!fgc_capture_active()) return 0;
    *old = CU_STREAM_CAPTURE_MODE_RELAXED;
    return cuThreadExchangeStreamCaptureMode(old) == CUDA_SUCCESS;
}

static void unrelax(int relaxed, CUstreamCaptureMode old) {
    if (relaxed) cuThreadExchangeStreamCaptureMode(&old);
}

CUresult fgc_shadow_mem_alloc(size_t n, CUdeviceptr *dev) {
    CUstreamCaptureMode old = CU_STREAM_CAPTURE_MODE_GLOBAL;
    int relaxed = relax(&old);
    CUresult r = cuMemAlloc_v2(dev, n);
    unrelax(relaxed, old);
    return r;
}

void fgc_shadow_mem_free(CUdeviceptr dev) {
    CUstreamCaptureMode old = CU_STREAM_CAPTURE_MODE_GLOBAL;
    int relaxed = relax(&old);
    cuMemFree_v2(dev);
    unrelax(relaxed, old);
}

/* ---- captures holding shadows ---- */

static void seq_note(uint64_t cap_id, uint64_t graph, CUstream s) {
    pthread_mutex_lock(&mu);
    int known = 0;
    for (size_t i = 0; i < n_seqs && !known; i++) known = seqs[i].cap_id == cap_id && seqs[i].graph == graph;
    if (!known && n_seqs < MAX_SEQS) seqs[n_seqs++] = (seq){cap_id, graph, s};
    pthread_mutex_unlock(&mu);
}

/* Forget the captures of graph; returns whether there was one. */
static int seq_forget(uint64_t graph) {
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = n_seqs; i-- > 0;)
        if (seqs[i].graph == graph) {
            seqs[i] = seqs[--n_seqs];
            hit = 1;
        }
    pthread_mutex_unlock(&mu);
    return hit;
}

/* Captures that are over without cuStreamEndCapture having said so (their stream destroyed, or capturing another
 * sequence now): their shadows go, unless the graph is the application's. */
static void sweep(uint64_t skip) {
    pthread_mutex_lock(&mu);
    size_t n = n_seqs;
    seq v[MAX_SEQS];
    memcpy(v, seqs, n * sizeof *v);
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < n; i++) {
        if (skip && v[i].cap_id == skip) continue; /* the capture just asked about */
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        uint64_t id = 0, graph = 0;
        CUresult r = fgc_capture_of(v[i].s, &st, &id, &graph);
        if (r == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE && id == v[i].cap_id) continue;
        if (r != CUDA_SUCCESS && r != CUDA_ERROR_INVALID_HANDLE && r != CUDA_ERROR_CONTEXT_IS_DESTROYED) continue;
        if (!seq_forget(v[i].graph)) continue; /* ended meanwhile */
        fgc_log(FGC_LOG_DEBUG, "a capture holding host-copy shadows ended unseen (stream gone or reused): freed");
        if (!fgc_capture_into_app_graph(v[i].graph)) fgc_graph_shadows_drop(v[i].graph);
    }
}

uint64_t fgc_capture_copies_graph(CUstream s) {
    pthread_mutex_lock(&mu);
    size_t n = n_seqs;
    pthread_mutex_unlock(&mu);
    if (!n) return 0;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    uint64_t id = 0, graph = 0;
    if (fgc_capture_of(s, &st, &id, &graph) != CUDA_SUCCESS || st == CU_STREAM_CAPTURE_STATUS_NONE) return 0;
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_seqs && !hit; i++) hit = seqs[i].graph == graph;
    pthread_mutex_unlock(&mu);
    return hit ? graph : 0;
}

void fgc_capture_copies_ended(uint64_t graph, uint64_t got, int keep) {
    seq_forget(graph);
    if (got) fgc_graph_shadows_move(graph, got); /* the same id, as the node hands it out: nothing moves */
    else if (!keep) fgc_graph_shadows_drop(graph);
    sweep(0);
}

/* ---- captured copies ---- */

/* Whether s captures: its capture's id and graph id. */
static int capturing(CUstream s, uint64_t *cap_id, uint64_t *graph) {
    if (!fgc_capture_active()) return 0;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    if (fgc_capture_of(s, &st, cap_id, graph) != CUDA_SUCCESS) return 0; /* the copy's own call gives the error */
    return st == CU_STREAM_CAPTURE_STATUS_ACTIVE && *graph;
}

/* One side of c (dst: the destination) is host memory at host, touched over the span [host, host + *end) by the
 * copy's geometry; whole: the copy writes every byte of that span. */
static void span(const CUDA_MEMCPY3D *c, int dst, size_t *end, int *whole) {
    size_t x = dst ? c->dstXInBytes : c->srcXInBytes, y = dst ? c->dstY : c->srcY, z = dst ? c->dstZ : c->srcZ;
    size_t pitch = dst ? c->dstPitch : c->srcPitch, height = dst ? c->dstHeight : c->srcHeight;
    size_t w = c->WidthInBytes, h = c->Height ? c->Height : 1, d = c->Depth ? c->Depth : 1;
    if (!pitch) pitch = w;
    if (!height) height = h;
    *end = ((z + d - 1) * height + (y + h - 1)) * pitch + x + w;
    *whole = !x && !y && !z && (h * d == 1 || (pitch == w && (d == 1 || height == h)));
}

/* The device address of row (y, z) of c's destination (dst) or source, both sides device memory. */
static CUdeviceptr row(const CUDA_MEMCPY3D *c, int dst, size_t y, size_t z) {
    size_t pitch = dst ? c->dstPitch : c->srcPitch, height = dst ? c->dstHeight : c->srcHeight;
    if (!pitch) pitch = c->WidthInBytes;
    if (!height) height = c->Height;
    size_t x = dst ? c->dstXInBytes : c->srcXInBytes, y0 = dst ? c->dstY : c->srcY, z0 = dst ? c->dstZ : c->srcZ;
    return (dst ? c->dstDevice : c->srcDevice) + ((z0 + z) * height + y0 + y) * pitch + x;
}

/* The copy c (host memory on one side, device memory on the other) on capturing stream s: the host side becomes
 * a new shadow, the copy goes device to device (1D: cuMemcpyDtoDAsync_v2; else a 3D copy), and the shadow is
 * bound to the capture's graph. */
static CUresult capture_copy(const CUDA_MEMCPY3D *in, CUstream s, int one_d, uint64_t cap_id, uint64_t graph) {
    CUDA_MEMCPY3D c = *in;
    int out = c.dstMemoryType == CU_MEMORYTYPE_HOST;
    uint64_t host = out ? (uint64_t)(uintptr_t)c.dstHost : (uint64_t)(uintptr_t)c.srcHost;
    size_t end = 0;
    int whole = 0;
    span(&c, out, &end, &whole);
    sweep(cap_id);
    CUdeviceptr dev = 0;
    CUresult r = fgc_shadow_mem_alloc(end ? end : 1, &dev);
    if (r != CUDA_SUCCESS) return r;
    void *sh = fgc_shadow_new(host, dev, end, out, !out || !whole);
    if (!sh) {
        fgc_shadow_mem_free(dev);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (out) {
        c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
        c.dstDevice = dev;
        c.dstHost = NULL;
    } else {
        c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
        c.srcDevice = dev;
        c.srcHost = NULL;
    }
    size_t h = c.Height, d = c.Depth;
    if (one_d) r = fgc_cuMemcpyDtoDAsync_v2(c.dstDevice, c.srcDevice, c.WidthInBytes, s);
    else if (c.WidthInBytes <= FG_CHUNK && h <= FG_CHUNK && d <= FG_CHUNK) r = fgc_cuMemcpy3DAsync_v2(&c, s);
    else /* beyond what one 3D record names: row by row */
        for (size_t z = 0; z < d && r == CUDA_SUCCESS; z++)
            for (size_t y = 0; y < h && r == CUDA_SUCCESS; y++)
                r = fgc_cuMemcpyDtoDAsync_v2(row(&c, 1, y, z), row(&c, 0, y, z), c.WidthInBytes, s);
    if (r != CUDA_SUCCESS) {
        fgc_shadow_discard(sh);
        return r;
    }
    fgc_shadow_keep(graph, sh);
    seq_note(cap_id, graph, s);
    return CUDA_SUCCESS;
}

static void one_d(CUDA_MEMCPY3D *c, size_t n) {
    memset(c, 0, sizeof *c);
    c->WidthInBytes = n;
    c->Height = 1;
    c->Depth = 1;
}

int fgc_capture_htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, CUresult *r) {
    uint64_t cap_id = 0, graph = 0;
    if (!n || !src || !capturing(s, &cap_id, &graph)) return 0;
    CUDA_MEMCPY3D c;
    one_d(&c, n);
    c.srcMemoryType = CU_MEMORYTYPE_HOST;
    c.srcHost = src;
    c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    c.dstDevice = dst;
    *r = capture_copy(&c, s, 1, cap_id, graph);
    return 1;
}

int fgc_capture_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, CUresult *r) {
    uint64_t cap_id = 0, graph = 0;
    if (!n || !dst || !capturing(s, &cap_id, &graph)) return 0;
    CUDA_MEMCPY3D c;
    one_d(&c, n);
    c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    c.srcDevice = src;
    c.dstMemoryType = CU_MEMORYTYPE_HOST;
    c.dstHost = dst;
    *r = capture_copy(&c, s, 1, cap_id, graph);
    return 1;
}

int fgc_capture_copy3d(const CUDA_MEMCPY3D *c, CUstream s, int keep_region, CUresult *r) {
    int hs = c->srcMemoryType == CU_MEMORYTYPE_HOST, hd = c->dstMemoryType == CU_MEMORYTYPE_HOST;
    int other = hs ? c->dstMemoryType == CU_MEMORYTYPE_DEVICE : c->srcMemoryType == CU_MEMORYTYPE_DEVICE;
    if (hs == hd || !other || !c->WidthInBytes || !c->Height || !c->Depth) return 0;
    if ((hs && !c->srcHost) || (hd && !c->dstHost)) return 0;
    size_t end = 0;
    int whole = 0;
    span(c, hd, &end, &whole);
    uint64_t off; /* the region's pages: the node's DMA uses them in place (rows of 2D copies, copy2d.c) */
    if (keep_region && fgc_shm_find(hd ? (const void *)c->dstHost : c->srcHost, end, &off)) return 0;
    uint64_t cap_id = 0, graph = 0;
    if (!capturing(s, &cap_id, &graph)) return 0;
    *r = capture_copy(c, s, 0, cap_id, graph);
    return 1;
}
