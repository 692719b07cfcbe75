/* capture.c — stream capture on the server: cuStreamGetCaptureInfo_v3 (the capture status, id and graph, and the
 * current dependency nodes as virtual ids, with their edge data when asked), cuStreamUpdateCaptureDependencies_v2,
 * cuStreamBeginCaptureToGraph (into the application's graph, from given dependency nodes), and cuStreamEndCapture,
 * which forgets the ids of a failed capture's graph and nodes (the driver destroyed them: a session's end must not
 * destroy them again) unless the capture was into the application's own graph, which stays the application's. One
 * worker serves one session, so the streams capturing into an application's graph are kept in this file. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_TO_GRAPH 64

static uint64_t g_to_graph[MAX_TO_GRAPH]; /* virtual ids of streams capturing into an application's graph */
static size_t g_n_to_graph;

/* Whether stream id sid captures into an application's graph; forget: it no longer does. */
static int to_graph(uint64_t sid, int forget) {
    for (size_t i = 0; i < g_n_to_graph; i++)
        if (g_to_graph[i] == sid) {
            if (forget) g_to_graph[i] = g_to_graph[--g_n_to_graph];
            return 1;
        }
    return 0;
}

void fgs_capture_began(uint64_t sid) { to_graph(sid, 1); } /* a plain capture on stream sid (capture_watch.c) */

/* Reads n node ids into nodes; CUDA_ERROR_INVALID_VALUE if one is not a live node of this session. */
static CUresult read_nodes(fgs_session *S, fg_reader *r, uint64_t n, CUgraphNode *nodes) {
    CUresult res = CUDA_SUCCESS;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = fg_get_u64(r);
        void *p = NULL;
        if (res == CUDA_SUCCESS && !r->failed && fgs_handle_get(S, FGH_GRAPHNODE, id, &p))
            res = CUDA_ERROR_INVALID_VALUE;
        nodes[i] = (CUgraphNode)p;
    }
    return res;
}

CUresult fgs_cuStreamGetCaptureInfo_v3(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t sid = fg_get_u64(r);
    uint8_t want_edges = 0;
    fg_get(r, &want_edges, 1);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuStreamGetCaptureInfo_v3) return fgs_missing(S, "cuStreamGetCaptureInfo_v3");
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    cuuint64_t id = 0;
    CUgraph g = NULL;
    const CUgraphNode *deps = NULL;
    const CUgraphEdgeData *edges = NULL;
    size_t n = 0;
    CUresult res = S->api->cuStreamGetCaptureInfo_v3((CUstream)s, &st, &id, &g, &deps, want_edges ? &edges : NULL, &n);
    if (res != CUDA_SUCCESS) return res;
    if (n > 4096) return CUDA_ERROR_NOT_SUPPORTED;
    fg_put_u32(out, (uint32_t)st);
    fg_put_u32(out, (uint32_t)n);
    fg_put_u64(out, id);
    fg_put_u64(out, g ? fgs_handle_add(S, FGH_GRAPH, g) : 0);
    for (size_t i = 0; i < n; i++) fg_put_u64(out, deps ? fgs_handle_add(S, FGH_GRAPHNODE, deps[i]) : 0);
    if (want_edges)
        for (size_t i = 0; i < n; i++) {
            CUgraphEdgeData e;
            memset(&e, 0, sizeof e);
            if (edges) e = edges[i];
            fg_put(out, &e, sizeof e);
        }
    return CUDA_SUCCESS;
}

/* u64 stream, u8 want; the reply: the graph's id. */
CUresult fgs_cuStreamEndCapture(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t sid = fg_get_u64(r);
    uint8_t want = 0;
    fg_get(r, &want, 1);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuStreamEndCapture) return fgs_missing(S, "cuStreamEndCapture");
    /* The capture's graph, if the client holds ids of it or its nodes: what to forget should the capture fail. */
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUgraph cap = NULL;
    uint64_t cap_id = 0;
    size_t n = 0;
    CUgraphNode *nodes = NULL;
    if (S->api->cuStreamGetCaptureInfo_v3 &&
        S->api->cuStreamGetCaptureInfo_v3((CUstream)s, &st, NULL, &cap, NULL, NULL, NULL) == CUDA_SUCCESS && cap &&
        (cap_id = fgs_handle_id_of(S, FGH_GRAPH, cap)) != 0 && S->api->cuGraphGetNodes &&
        S->api->cuGraphGetNodes(cap, NULL, &n) == CUDA_SUCCESS && n &&
        (nodes = (CUgraphNode *)malloc(n * sizeof *nodes)) != NULL &&
        S->api->cuGraphGetNodes(cap, nodes, &n) != CUDA_SUCCESS)
        n = 0;
    CUgraph g = NULL;
    CUresult res = S->api->cuStreamEndCapture((CUstream)s, want ? &g : NULL);
    int mine = to_graph(sid, 0); /* the application's graph: never forgotten here */
    if (res == CUDA_SUCCESS || (S->api->cuStreamIsCapturing &&
                                S->api->cuStreamIsCapturing((CUstream)s, &st) == CUDA_SUCCESS &&
                                st == CU_STREAM_CAPTURE_STATUS_NONE))
        to_graph(sid, 1);
    if (res == CUDA_SUCCESS) {
        fg_put_u64(out, want && g ? fgs_handle_add(S, FGH_GRAPH, (void *)g) : 0);
    } else if (cap_id && !mine && S->api->cuStreamIsCapturing &&
               S->api->cuStreamIsCapturing((CUstream)s, &st) == CUDA_SUCCESS && st == CU_STREAM_CAPTURE_STATUS_NONE) {
        fgs_handle_remove(S, FGH_GRAPH, cap_id); /* the capture is over and its graph gone */
        for (size_t i = 0; nodes && i < n; i++)
            fgs_handle_remove(S, FGH_GRAPHNODE, fgs_handle_id_of(S, FGH_GRAPHNODE, nodes[i]));
    }
    free(nodes);
    return res;
}

CUresult fgs_cuGraphGetNodes(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t gid = fg_get_u64(r), cap = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (cap > 4096) return CUDA_ERROR_INVALID_VALUE;
    void *g;
    if (fgs_handle_get(S, FGH_GRAPH, gid, &g)) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuGraphGetNodes) return fgs_missing(S, "cuGraphGetNodes");
    size_t total = 0;
    CUresult res = S->api->cuGraphGetNodes((CUgraph)g, NULL, &total);
    if (res != CUDA_SUCCESS) return res;
    fg_put_u64(out, total);
    if (!cap || !total) return CUDA_SUCCESS;
    size_t n = total < cap ? total : (size_t)cap;
    CUgraphNode *nodes = (CUgraphNode *)fgs_scratch(S, n * sizeof *nodes);
    if (!nodes) return CUDA_ERROR_OUT_OF_MEMORY;
    res = S->api->cuGraphGetNodes((CUgraph)g, nodes, &n);
    if (res != CUDA_SUCCESS) return res;
    for (size_t i = 0; i < n; i++) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHNODE, nodes[i]));
    return CUDA_SUCCESS;
}

CUresult fgs_cuThreadExchangeStreamCaptureMode(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint32_t m = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuThreadExchangeStreamCaptureMode) return fgs_missing(S, "cuThreadExchangeStreamCaptureMode");
    CUstreamCaptureMode mode = (CUstreamCaptureMode)m;
    CUresult res = S->api->cuThreadExchangeStreamCaptureMode(&mode);
    if (res == CUDA_SUCCESS) fg_put_u32(out, (uint32_t)mode);
    return res;
}

/* A dependency list as cuStreamUpdateCaptureDependencies_v2 and cuStreamBeginCaptureToGraph send it: n node ids
 * (n already bounded), then u8 edge-data flag (+ n CUgraphEdgeData). The arrays live in the session's scratch;
 * *edges stays NULL without edge data. The result is read_nodes' (a bad id), or out of memory with *nodes NULL;
 * a malformed rest shows in r->failed or *has_edges > 1. */
static CUresult read_deps(fgs_session *S, fg_reader *r, uint64_t n, CUgraphNode **nodes, CUgraphEdgeData **edges,
                          uint8_t *has_edges) {
    *nodes = n ? (CUgraphNode *)fgs_scratch(S, n * (sizeof(CUgraphNode) + sizeof(CUgraphEdgeData))) : NULL;
    if (n && !*nodes) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = read_nodes(S, r, n, *nodes);
    fg_get(r, has_edges, 1);
    if (*has_edges && n) {
        const uint8_t *eb = fg_take(r, n * sizeof(CUgraphEdgeData));
        *edges = (CUgraphEdgeData *)(void *)(*nodes + n);
        if (eb) memcpy(*edges, eb, n * sizeof **edges);
    }
    return res;
}

/* cuStreamUpdateCaptureDependencies_v2: u64 stream, u64 n + n node ids, u8 edge-data flag (+ n CUgraphEdgeData),
 * u32 flags. The nodes must be live nodes of this session (the driver checks they are in the capture's graph). */
CUresult fgs_cuStreamUpdateCaptureDependencies_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t sid = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed || n > 4096) return FGS_PROTOCOL_ERROR;
    CUgraphNode *nodes = NULL;
    CUgraphEdgeData *edges = NULL;
    uint8_t has_edges = 0;
    CUresult res = read_deps(S, r, n, &nodes, &edges, &has_edges);
    if (n && !nodes) return res; /* out of memory */
    uint32_t flags = fg_get_u32(r);
    if (r->failed || has_edges > 1) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (res != CUDA_SUCCESS) return res;
    if (!S->api->cuStreamUpdateCaptureDependencies_v2) return fgs_missing(S, "cuStreamUpdateCaptureDependencies_v2");
    return S->api->cuStreamUpdateCaptureDependencies_v2((CUstream)s, nodes, edges, (size_t)n, flags);
}

/* cuStreamBeginCaptureToGraph: u64 stream, u64 graph, u64 n + n node ids, u8 edge-data flag (+ n CUgraphEdgeData),
 * u32 mode. The nodes must be live nodes of this session (the driver checks they are the graph's). */
CUresult fgs_cuStreamBeginCaptureToGraph(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t sid = fg_get_u64(r), gid = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed || n > 4096) return FGS_PROTOCOL_ERROR;
    CUgraphNode *nodes = NULL;
    CUgraphEdgeData *edges = NULL;
    uint8_t has_edges = 0;
    CUresult res = read_deps(S, r, n, &nodes, &edges, &has_edges);
    if (n && !nodes) return res; /* out of memory */
    uint32_t mode = fg_get_u32(r);
    if (r->failed || has_edges > 1) return FGS_PROTOCOL_ERROR;
    void *s, *g;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s) || fgs_handle_get(S, FGH_GRAPH, gid, &g))
        return CUDA_ERROR_INVALID_HANDLE;
    if (res != CUDA_SUCCESS) return res;
    if (!S->api->cuStreamBeginCaptureToGraph) return fgs_missing(S, "cuStreamBeginCaptureToGraph");
    if (g_n_to_graph == MAX_TO_GRAPH && !to_graph(sid, 0)) return CUDA_ERROR_OUT_OF_MEMORY;
    res = S->api->cuStreamBeginCaptureToGraph((CUstream)s, (CUgraph)g, nodes, edges, (size_t)n,
                                              (CUstreamCaptureMode)mode);
    if (res == CUDA_SUCCESS && !to_graph(sid, 0)) g_to_graph[g_n_to_graph++] = sid;
    return res;
}
