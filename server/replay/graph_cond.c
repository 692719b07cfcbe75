/* graph_cond.c — conditional graph nodes: condition handles (cuGraphConditionalHandleCreate) and conditional
 * nodes, which the stub sends through cuGraphAddNode_v2 (every other node kind goes through its own call:
 * client_stub/graph_node_params.c). A handle is the driver's opaque 64-bit value; the application passes it to
 * its kernels, which set the condition on the device. A node's body graphs belong to the node: they get ids the
 * session never destroys (borrowed, graph_query.c), which go when the node's graph is destroyed. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_DEPS 4096
#define MAX_BODIES 1024

static CUresult get_ctx(fgs_session *S, fg_reader *r, CUcontext *ctx) {
    uint64_t id = fg_get_u64(r);
    void *c = NULL;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (id && (fgs_handle_get(S, FGH_CONTEXT, id, &c) || !c)) return CUDA_ERROR_INVALID_CONTEXT;
    *ctx = (CUcontext)c;
    return *ctx ? CUDA_SUCCESS : S->api->cuCtxGetCurrent(ctx);
}

/* graph id, context id (0: current), u32 default value, u32 flags -> u64 handle */
CUresult fgs_cuGraphConditionalHandleCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    if (!S->api->cuGraphConditionalHandleCreate) return fgs_missing(S, "cuGraphConditionalHandleCreate");
    uint64_t gid = fg_get_u64(r);
    CUcontext ctx = NULL;
    CUresult res = get_ctx(S, r, &ctx);
    uint32_t deflt = fg_get_u32(r), flags = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *g = NULL;
    if (fgs_handle_get(S, FGH_GRAPH, gid, &g) || !g) return CUDA_ERROR_INVALID_VALUE;
    if (res != CUDA_SUCCESS) return res;
    CUgraphConditionalHandle h = 0;
    res = S->api->cuGraphConditionalHandleCreate(&h, (CUgraph)g, ctx, deflt, flags);
    if (res == CUDA_SUCCESS) fg_put_u64(out, (uint64_t)h);
    return res;
}

/* graph id, u64 n, n dependency ids, u64 handle, u32 type, u32 size, context id
 *   -> u64 node id, u32 size, size body graph ids */
CUresult fgs_cuGraphAddNode_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    if (!S->api->cuGraphAddNode_v2) return fgs_missing(S, "cuGraphAddNode_v2");
    uint64_t gid = fg_get_u64(r), n = fg_get_u64(r);
    if (r->failed || n > MAX_DEPS) return FGS_PROTOCOL_ERROR;
    CUgraphNode *deps = n ? (CUgraphNode *)calloc(n, sizeof *deps) : NULL;
    if (n && !deps) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = CUDA_SUCCESS;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = fg_get_u64(r);
        void *p = NULL;
        if (res == CUDA_SUCCESS && !r->failed && (fgs_handle_get(S, FGH_GRAPHNODE, id, &p) || !p))
            res = CUDA_ERROR_INVALID_VALUE;
        deps[i] = (CUgraphNode)p;
    }
    CUgraphNodeParams p;
    memset(&p, 0, sizeof p);
    p.type = CU_GRAPH_NODE_TYPE_CONDITIONAL;
    p.conditional.handle = fg_get_u64(r);
    p.conditional.type = (CUgraphConditionalNodeType)fg_get_u32(r);
    p.conditional.size = fg_get_u32(r);
    CUcontext ctx = NULL;
    CUresult cres = get_ctx(S, r, &ctx);
    if (r->failed) res = FGS_PROTOCOL_ERROR;
    if (res == CUDA_SUCCESS) res = cres;
    void *g = NULL;
    if (res == CUDA_SUCCESS && (fgs_handle_get(S, FGH_GRAPH, gid, &g) || !g)) res = CUDA_ERROR_INVALID_VALUE;
    if (res == CUDA_SUCCESS && (p.conditional.size == 0 || p.conditional.size > MAX_BODIES))
        res = CUDA_ERROR_INVALID_VALUE;
    p.conditional.ctx = ctx;
    CUgraphNode node = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddNode_v2(&node, (CUgraph)g, deps, NULL, (size_t)n, &p);
    free(deps);
    if (res != CUDA_SUCCESS) return res;
    if (!p.conditional.phGraph_out) return CUDA_ERROR_INVALID_VALUE;
    fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHNODE, node));
    fg_put_u32(out, p.conditional.size);
    for (unsigned i = 0; i < p.conditional.size; i++) {
        CUgraph b = p.conditional.phGraph_out[i];
        uint64_t known = fgs_handle_id_of(S, FGH_GRAPH, b);
        uint64_t id = known ? known : fgs_handle_add(S, FGH_GRAPH, b);
        if (!known && id && fgs_graph_borrow(S, id, gid) != 0) {
            fgs_handle_remove(S, FGH_GRAPH, id);
            id = 0;
        }
        fg_put_u64(out, id);
    }
    return CUDA_SUCCESS;
}
