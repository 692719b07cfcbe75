/* mempool_capture.c — cuMemAllocAsync and cuMemAllocFromPoolAsync on a stream under capture: a graph allocation,
 * as the driver makes one, emulated over the session's own memory.
 *
 * The memory is allocated now, out of the pool the call names (or the stream's device's current pool), exactly as
 * an ordinary stream-ordered allocation (mempool_blocks.c): quota-counted, small requests carved out of shared
 * chunks, paged and parked with the rest of the session. Its address is fixed from here on, as a graph
 * allocation's is from its node's creation. The capture gets an empty node where the allocation node would be:
 * it depends on the capture's current dependencies and becomes the capture's only one
 * (cuStreamUpdateCaptureDependencies_v2), so the work captured after it is ordered after it, as after an
 * allocation node. The reply names that node and its graph; the stub records the node as a memory-allocation node
 * of the graph (client_stub/graph_mem.c) and from then on owns the memory's lifetime as for hand-built graph
 * memory nodes: held while a graph or executable holding the node lives, handed to the application by a launch
 * without a free node, freed (cuMemFree) when nothing holds it any more. Free nodes are made in the stub too.
 *
 * The allocation runs with the thread's capture mode relaxed: the worker's memory calls (VMM mapping) are not
 * the application's, and a global-mode capture must not be invalidated by them. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_mempool.h"

#define MAX_CAPTURE_DEPS 4096

/* A captured allocation that fails says where, once per step: the driver's reasons under capture are terse. */
static CUresult failed(fgs_session *S, const char *step, CUresult r, int status) {
    static int told[4];
    int i = step[0] == 'q' ? 0 : step[0] == 'a' ? 1 : step[0] == 'n' ? 2 : 3;
    if (!told[i]++)
        fgs_log(S, "a stream-ordered allocation under capture failed at %s: CUDA error %d (capture status %d)", step,
                (int)r, status);
    return r;
}

CUresult mp_captured_alloc(fgs_session *S, mp_pool *p, CUstream s, uint64_t size, fg_writer *out) {
    if (!S->api->cuStreamGetCaptureInfo_v3) return fgs_missing(S, "cuStreamGetCaptureInfo_v3");
    if (!S->api->cuGraphAddEmptyNode) return fgs_missing(S, "cuGraphAddEmptyNode");
    if (!S->api->cuStreamUpdateCaptureDependencies_v2) return fgs_missing(S, "cuStreamUpdateCaptureDependencies_v2");
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    cuuint64_t cid = 0;
    CUgraph g = NULL;
    const CUgraphNode *d = NULL;
    size_t n = 0;
    CUresult res = S->api->cuStreamGetCaptureInfo_v3(s, &st, &cid, &g, &d, NULL, &n);
    if (res != CUDA_SUCCESS) return failed(S, "query (cuStreamGetCaptureInfo_v3)", res, (int)st);
    if (st != CU_STREAM_CAPTURE_STATUS_ACTIVE || !g)
        return failed(S, "query (the capture was already invalidated)", CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, (int)st);
    if (n > MAX_CAPTURE_DEPS || (n && !d)) return CUDA_ERROR_NOT_SUPPORTED;
    CUgraphNode *deps = n ? (CUgraphNode *)malloc(n * sizeof *deps) : NULL; /* the driver's array is short-lived */
    if (n && !deps) return CUDA_ERROR_OUT_OF_MEMORY;
    if (n) memcpy(deps, d, n * sizeof *deps);

    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    int relaxed = S->api->cuThreadExchangeStreamCaptureMode &&
                  S->api->cuThreadExchangeStreamCaptureMode(&mode) == CUDA_SUCCESS;
    CUdeviceptr ptr = 0;
    res = mp_alloc_ptr(S, p, size, &ptr);
    if (relaxed) S->api->cuThreadExchangeStreamCaptureMode(&mode); /* the application's mode again */

    CUgraphNode node = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddEmptyNode(&node, g, deps, n);
    if (res == CUDA_SUCCESS) {
        res = S->api->cuStreamUpdateCaptureDependencies_v2(s, &node, NULL, 1, CU_STREAM_SET_CAPTURE_DEPENDENCIES);
        if (res != CUDA_SUCCESS && S->api->cuGraphDestroyNode) S->api->cuGraphDestroyNode(node);
    }
    free(deps);
    if (res != CUDA_SUCCESS) {
        if (ptr) mp_release_ptr(S, ptr);
        CUstreamCaptureStatus now = CU_STREAM_CAPTURE_STATUS_NONE;
        if (S->api->cuStreamIsCapturing) S->api->cuStreamIsCapturing(s, &now);
        return failed(S, !ptr ? "allocation (pool memory)" : !node ? "node (cuGraphAddEmptyNode)"
                                                              : "dependencies (cuStreamUpdateCaptureDependencies_v2)",
                      res, (int)now);
    }
    uint64_t node_id = fgs_handle_add(S, FGH_GRAPHNODE, node), graph_id = fgs_handle_add(S, FGH_GRAPH, g);
    if (!node_id || !graph_id) { /* the handle tables are full: the capture cannot go on as the client sees it */
        mp_release_ptr(S, ptr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fg_put_u64(out, ptr);
    fg_put_u64(out, node_id);
    fg_put_u64(out, graph_id);
    fg_put_u64(out, (uint64_t)p->dev);
    fg_put_u64(out, 0); /* a graph allocation: no pool of the application's */
    return CUDA_SUCCESS;
}
