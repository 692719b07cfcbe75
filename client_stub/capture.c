/* capture.c — cuStreamBeginCaptureToGraph, cuStreamEndCapture, cuStreamGetCaptureInfo_v3 and
 * cuStreamUpdateCaptureDependencies[_v2]. The driver hands back pointers
 * to its own arrays of dependency nodes and edge data; the stub keeps per-thread copies of the server's answer,
 * valid until the thread's next call, as the driver's are valid until the next capture operation on the stream.
 * Updating the dependencies (how nodes added to a capture's graph by hand join the capture) goes to the server.
 * fgc_capture_of asks the same query for the stub itself (capture_copies.c), leaving those per-thread copies alone;
 * cuStreamEndCapture tells capture_copies.c how a capture holding host-copy shadows ended. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_DEPS 4096
#define MAX_TO_GRAPH 64

/* Streams capturing into an application's graph (cuStreamBeginCaptureToGraph), with that graph's id: a failed
 * capture there leaves the graph, and the graph allocations and copy shadows made in it, to the application. */
static pthread_mutex_t to_graph_mu = PTHREAD_MUTEX_INITIALIZER;
static CUstream to_graph_streams[MAX_TO_GRAPH];
static uint64_t to_graph_ids[MAX_TO_GRAPH];
static size_t n_to_graph;

static int to_graph(CUstream s, uint64_t graph, int add, int forget) {
    int hit = 0;
    pthread_mutex_lock(&to_graph_mu);
    for (size_t i = 0; i < n_to_graph && !hit; i++)
        if (to_graph_streams[i] == s) {
            hit = 1;
            if (forget) {
                --n_to_graph;
                to_graph_streams[i] = to_graph_streams[n_to_graph];
                to_graph_ids[i] = to_graph_ids[n_to_graph];
            }
        }
    if (!hit && add && n_to_graph < MAX_TO_GRAPH) {
        to_graph_streams[n_to_graph] = s;
        to_graph_ids[n_to_graph++] = graph;
    }
    pthread_mutex_unlock(&to_graph_mu);
    return hit;
}

int fgc_capture_into_app_graph(uint64_t graph) {
    int hit = 0;
    pthread_mutex_lock(&to_graph_mu);
    for (size_t i = 0; i < n_to_graph && !hit; i++) hit = graph && to_graph_ids[i] == graph;
    pthread_mutex_unlock(&to_graph_mu);
    return hit;
}

static __thread CUgraphNode *t_deps;
static __thread CUgraphEdgeData *t_edges;
static __thread uint8_t *t_reply; /* n node ids, then (if asked) n edge records */

typedef struct {
    uint32_t status, n;
    uint64_t id, graph;
} info_head;

#define REPLY_MAX (MAX_DEPS * (sizeof(uint64_t) + sizeof(CUgraphEdgeData)))

/* The node's answer for hStream: its head, and n node ids (then n edge records when asked) in reply. */
static CUresult ask_info(CUstream hStream, uint8_t want_edges, info_head *head, uint8_t *reply) {
    fg_writer *w = fgc_begin(FG_OP_cuStreamGetCaptureInfo_v3);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hStream);
    fg_put(w, &want_edges, 1);
    fgc_expect(head, sizeof *head);
    fgc_expect(reply, REPLY_MAX);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r != CUDA_SUCCESS) return r;
    size_t need = sizeof *head + (size_t)head->n * (sizeof(uint64_t) + (want_edges ? sizeof(CUgraphEdgeData) : 0));
    if (got < sizeof *head || head->n > MAX_DEPS || got != need) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

CUresult fgc_capture_of(CUstream s, CUstreamCaptureStatus *st, uint64_t *id, uint64_t *graph) {
    *st = CU_STREAM_CAPTURE_STATUS_NONE;
    *id = *graph = 0;
    if (!fgc_capture_active()) return CUDA_SUCCESS;
    uint8_t *reply = (uint8_t *)malloc(REPLY_MAX);
    if (!reply) return CUDA_ERROR_OUT_OF_MEMORY;
    info_head head;
    CUresult r = ask_info(s, 0, &head, reply);
    free(reply);
    if (r != CUDA_SUCCESS) return r;
    *st = (CUstreamCaptureStatus)head.status;
    *id = head.id;
    *graph = head.graph;
    return CUDA_SUCCESS;
}

CUresult fgc_cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out,
                                       CUgraph *graph_out, const CUgraphNode **dependencies_out,
                                       const CUgraphEdgeData **edgeData_out, size_t *numDependencies_out) {
    FGC_REQUIRE_INIT();
    if (!captureStatus_out) return CUDA_ERROR_INVALID_VALUE;
    if (!fgc_capture_active()) { /* no capture anywhere in the process: nothing to ask */
        *captureStatus_out = CU_STREAM_CAPTURE_STATUS_NONE;
        if (id_out) *id_out = 0;
        if (graph_out) *graph_out = NULL;
        if (dependencies_out) *dependencies_out = NULL;
        if (edgeData_out) *edgeData_out = NULL;
        if (numDependencies_out) *numDependencies_out = 0;
        return CUDA_SUCCESS;
    }
    if (!t_deps) t_deps = (CUgraphNode *)calloc(MAX_DEPS, sizeof *t_deps);
    if (!t_edges) t_edges = (CUgraphEdgeData *)calloc(MAX_DEPS, sizeof *t_edges);
    if (!t_reply) t_reply = (uint8_t *)malloc(REPLY_MAX);
    if (!t_deps || !t_edges || !t_reply) return CUDA_ERROR_OUT_OF_MEMORY;
    uint8_t want_edges = edgeData_out != NULL;
    info_head head;
    CUresult r = ask_info(hStream, want_edges, &head, t_reply);
    if (r != CUDA_SUCCESS) return r;
    for (uint32_t k = 0; k < head.n; k++) {
        uint64_t id;
        memcpy(&id, t_reply + k * sizeof id, sizeof id);
        t_deps[k] = (CUgraphNode)(uintptr_t)id;
    }
    if (want_edges && head.n)
        memcpy(t_edges, t_reply + head.n * sizeof(uint64_t), head.n * sizeof(CUgraphEdgeData));
    *captureStatus_out = (CUstreamCaptureStatus)head.status;
    if (id_out) *id_out = head.id;
    if (graph_out) *graph_out = (CUgraph)(uintptr_t)head.graph;
    if (dependencies_out) *dependencies_out = head.n ? t_deps : NULL;
    if (edgeData_out) *edgeData_out = head.n ? t_edges : NULL;
    if (numDependencies_out) *numDependencies_out = head.n;
    return CUDA_SUCCESS;
}

/* The CUDA 12.3 ABI (no edge data): answered through the same query. */
CUresult fgc_cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out,
                                       CUgraph *graph_out, const CUgraphNode **dependencies_out,
                                       size_t *numDependencies_out) {
    return fgc_cuStreamGetCaptureInfo_v3(hStream, captureStatus_out, id_out, graph_out, dependencies_out, NULL,
                                         numDependencies_out);
}

/* cuStreamEndCapture: the reply is the graph's id. The capture is over when the call succeeds, or when it failed and
 * the stream no longer captures (the driver destroyed the graph: the graph allocations made in it go, graph_mem.c,
 * and so do the shadows of its host copies, capture_copies.c); a failure that leaves the capture going (another
 * thread's capture mode) changes nothing here. */
CUresult fgc_cuStreamEndCapture(CUstream hStream, CUgraph *phGraph) {
    FGC_REQUIRE_INIT();
    uint64_t discard = 0;
    uint64_t shadowed = fgc_capture_copies_graph(hStream); /* asked before the capture goes */
    fg_writer *w = fgc_begin(FG_OP_cuStreamEndCapture);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hStream);
    uint8_t want = phGraph != NULL;
    fg_put(w, &want, 1);
    fgc_expect(phGraph ? (void *)phGraph : (void *)&discard, sizeof(uint64_t));
    CUresult r = fgc_sync();
    if (r == CUDA_ERROR_INVALID_HANDLE) return r;
    int over = r == CUDA_SUCCESS;
    if (!over) {
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        over = cuStreamIsCapturing(hStream, &st) != CUDA_SUCCESS || st == CU_STREAM_CAPTURE_STATUS_NONE;
    }
    if (over) {
        int mine = to_graph(hStream, 0, 0, 1);
        if (r != CUDA_SUCCESS && phGraph) *phGraph = NULL; /* an invalidated capture hands out no graph */
        if (shadowed)
            fgc_capture_copies_ended(shadowed, r == CUDA_SUCCESS ? (phGraph ? fgc_handle_id(*phGraph) : discard) : 0,
                                     mine);
        fgc_capture_end();
        fgc_graph_mem_capture_ended(hStream, r == CUDA_SUCCESS || mine);
    }
    return r;
}

/* u64 stream, u64 graph, u64 n + n node ids, u8 edge-data flag (+ n CUgraphEdgeData), u32 mode. Like
 * cuStreamBeginCapture_v2, the thread's capture mode goes to the server first. */
CUresult fgc_cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph, const CUgraphNode *dependencies,
                                         const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                         CUstreamCaptureMode mode) {
    FGC_REQUIRE_INIT();
    if (numDependencies > MAX_DEPS || (numDependencies && !dependencies)) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = fgc_capture_mode_sync();
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuStreamBeginCaptureToGraph);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hStream);
    fgc_put_handle(w, hGraph);
    fg_put_u64(w, numDependencies);
    for (size_t i = 0; i < numDependencies; i++) fgc_put_handle(w, dependencies[i]);
    uint8_t has = dependencyData != NULL && numDependencies;
    fg_put(w, &has, 1);
    if (dependencyData != NULL && numDependencies) fg_put(w, dependencyData, numDependencies * sizeof *dependencyData);
    fg_put_u32(w, (uint32_t)mode);
    r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        to_graph(hStream, fgc_handle_id(hGraph), 1, 0);
        fgc_capture_begin();
    }
    return r;
}

/* u64 stream, u64 n + n node ids, u8 edge-data flag (+ n CUgraphEdgeData), u32 flags */
CUresult fgc_cuStreamUpdateCaptureDependencies_v2(CUstream hStream, CUgraphNode *dependencies,
                                                  const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                                  unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (numDependencies > MAX_DEPS || (numDependencies && !dependencies)) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuStreamUpdateCaptureDependencies_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hStream);
    fg_put_u64(w, numDependencies);
    for (size_t i = 0; i < numDependencies; i++) fgc_put_handle(w, dependencies[i]);
    uint8_t has = dependencyData != NULL && numDependencies;
    fg_put(w, &has, 1);
    if (dependencyData != NULL && numDependencies) /* not `has`: its address escaped, so gcc loses the NULL check */
        fg_put(w, dependencyData, numDependencies * sizeof *dependencyData);
    fg_put_u32(w, flags);
    return fgc_sync();
}

/* The CUDA 12.2 ABI (no edge data). */
CUresult fgc_cuStreamUpdateCaptureDependencies(CUstream hStream, CUgraphNode *dependencies, size_t numDependencies,
                                               unsigned int flags) {
    return fgc_cuStreamUpdateCaptureDependencies_v2(hStream, dependencies, NULL, numDependencies, flags);
}

/* cuGraphGetNodes: nodes NULL asks for the count; otherwise up to *numNodes node handles come back. */
CUresult fgc_cuGraphGetNodes(CUgraph hGraph, CUgraphNode *nodes, size_t *numNodes) {
    FGC_REQUIRE_INIT();
    if (!numNodes) return CUDA_ERROR_INVALID_VALUE;
    uint64_t cap = nodes ? (uint64_t)*numNodes : 0;
    if (cap > MAX_DEPS) cap = MAX_DEPS;
    uint64_t *ids = cap ? (uint64_t *)calloc(cap, sizeof *ids) : NULL;
    if (cap && !ids) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_writer *w = fgc_begin(FG_OP_cuGraphGetNodes);
    if (!w) {
        free(ids);
        return fgc_last_error();
    }
    fgc_put_handle(w, hGraph);
    fg_put_u64(w, cap);
    uint64_t total = 0;
    fgc_expect(&total, sizeof total);
    if (cap) fgc_expect(ids, cap * sizeof *ids);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r == CUDA_SUCCESS) {
        uint64_t n = total < cap ? total : cap;
        if (got != sizeof total + n * sizeof *ids) r = CUDA_ERROR_INVALID_VALUE;
        for (uint64_t i = 0; r == CUDA_SUCCESS && i < n; i++) nodes[i] = (CUgraphNode)(uintptr_t)ids[i];
        if (r == CUDA_SUCCESS) *numNodes = nodes ? (size_t)n : (size_t)total;
    }
    free(ids);
    return r;
}

/* The calling thread's stream-capture mode. It only matters while a capture is under way, so until then the stub
 * keeps it (libraries exchange it around many calls); it is handed to the server before a capture begins and
 * exchanged there while one runs. (The server runs all of a client's threads on one thread, so per-thread
 * modes are approximate during concurrent captures from several threads.) */
static __thread CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
static __thread int t_mode_sent; /* the server has t_mode for this client */

static CUresult exchange_remote(CUstreamCaptureMode *mode) {
    fg_writer *w = fgc_begin(FG_OP_cuThreadExchangeStreamCaptureMode);
    if (!w) return fgc_last_error();
    uint32_t m = (uint32_t)*mode;
    fg_put_u32(w, m);
    fgc_expect(&m, sizeof m);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *mode = (CUstreamCaptureMode)m;
    return r;
}

CUresult fgc_cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode) {
    FGC_REQUIRE_INIT();
    if (!mode || (unsigned)*mode > CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode want = *mode;
    if (fgc_capture_active()) {
        CUresult r = exchange_remote(mode);
        if (r == CUDA_SUCCESS) {
            t_mode = want;
            t_mode_sent = 1;
        }
        return r;
    }
    *mode = t_mode;
    t_mode = want;
    t_mode_sent = 0;
    return CUDA_SUCCESS;
}

CUresult fgc_capture_mode_sync(void) {
    if (t_mode_sent || t_mode == CU_STREAM_CAPTURE_MODE_GLOBAL) return CUDA_SUCCESS;
    CUstreamCaptureMode m = t_mode;
    CUresult r = exchange_remote(&m);
    if (r == CUDA_SUCCESS) t_mode_sent = 1;
    return r;
}
