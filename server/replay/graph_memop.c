/* graph_memop.c — batch memory-operation graph nodes: cuGraphAddBatchMemOpNode, cuGraphBatchMemOpNodeGetParams,
 * cuGraphBatchMemOpNodeSetParams, cuGraphExecBatchMemOpNodeSetParams. The parameters travel as
 * "u64 context, u32 count, u32 flags, count x CUstreamBatchMemOpParams" (after "u64 graph, u64 n, n dependency
 * ids" for an add, "u64 node" for a set, "u64 exec, u64 node" for an executable's set); GetParams answers in the
 * same form. As for cuStreamBatchMemOp_v2 (memops.c), the count is bounded before the array is read, every wait and
 * write must name this session's memory, the driver's internal field is cleared, and handles are the session's
 * virtual ids, translated here. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_OPS 256
#define MAX_DEPS 4096

typedef struct {
    CUDA_BATCH_MEM_OP_NODE_PARAMS p;
    CUstreamBatchMemOpParams ops[MAX_OPS];
} memop_params;

/* Decodes the parameters (the stub's ids translated, addresses checked). */
static CUresult get_params(fgs_session *S, fg_reader *r, memop_params *m) {
    uint64_t cid = fg_get_u64(r);
    uint32_t count = fg_get_u32(r), flags = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (count > MAX_OPS) return CUDA_ERROR_INVALID_VALUE;
    if (count) fg_get(r, m->ops, (size_t)count * sizeof m->ops[0]);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    void *ctx = NULL;
    if (fgs_handle_get(S, FGH_CONTEXT, cid, &ctx)) return CUDA_ERROR_INVALID_VALUE;
    for (uint32_t i = 0; i < count; i++) {
        CUstreamBatchMemOpParams *p = &m->ops[i];
        uint64_t n = p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32
                         ? 4
                     : p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64
                         ? 8
                         : 0;
        if (!n) continue;
        if (!fgs_device_range_ok(S, p->waitValue.address, n)) return CUDA_ERROR_INVALID_VALUE;
        p->waitValue.alias = 0;
    }
    m->p.ctx = (CUcontext)ctx;
    m->p.count = count;
    m->p.paramArray = count ? m->ops : NULL;
    m->p.flags = flags;
    return CUDA_SUCCESS;
}

static CUresult get_node(fgs_session *S, fg_reader *r, int kind, void **p) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    return fgs_handle_get(S, kind, id, p) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult fgs_cuGraphAddBatchMemOpNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    void *g = NULL;
    uint64_t gid = fg_get_u64(r), k = fg_get_u64(r);
    if (r->failed || k > MAX_DEPS) return FGS_PROTOCOL_ERROR;
    int bad = fgs_handle_get(S, FGH_GRAPH, gid, &g);
    CUgraphNode *deps = k ? (CUgraphNode *)malloc(k * sizeof *deps) : NULL;
    if (k && !deps) return CUDA_ERROR_OUT_OF_MEMORY;
    for (uint64_t i = 0; i < k; i++) {
        void *p = NULL;
        uint64_t id = fg_get_u64(r);
        if (!r->failed && fgs_handle_get(S, FGH_GRAPHNODE, id, &p)) bad = 1;
        deps[i] = (CUgraphNode)p;
    }
    memop_params *m = (memop_params *)malloc(sizeof *m);
    CUresult res = m ? get_params(S, r, m) : CUDA_ERROR_OUT_OF_MEMORY;
    if (res == CUDA_SUCCESS && bad) res = CUDA_ERROR_INVALID_VALUE;
    if (res == CUDA_SUCCESS && !S->api->cuGraphAddBatchMemOpNode) res = fgs_missing(S, "cuGraphAddBatchMemOpNode");
    CUgraphNode node = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddBatchMemOpNode(&node, (CUgraph)g, deps, (size_t)k, &m->p);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHNODE, node));
    free(deps);
    free(m);
    return res;
}

CUresult fgs_cuGraphBatchMemOpNodeGetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    void *node;
    CUresult res = get_node(S, r, FGH_GRAPHNODE, &node);
    if (res != CUDA_SUCCESS) return res;
    if (fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuGraphBatchMemOpNodeGetParams) return fgs_missing(S, "cuGraphBatchMemOpNodeGetParams");
    CUDA_BATCH_MEM_OP_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    res = S->api->cuGraphBatchMemOpNodeGetParams((CUgraphNode)node, &p);
    if (res != CUDA_SUCCESS) return res;
    if (p.count > MAX_OPS || (p.count && !p.paramArray)) return CUDA_ERROR_UNKNOWN;
    fg_put_u64(out, p.ctx ? fgs_handle_id_of(S, FGH_CONTEXT, p.ctx) : 0);
    fg_put_u32(out, p.count);
    fg_put_u32(out, p.flags);
    if (p.count) fg_put(out, p.paramArray, (size_t)p.count * sizeof *p.paramArray);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphBatchMemOpNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    void *node;
    CUresult res = get_node(S, r, FGH_GRAPHNODE, &node);
    if (res == FGS_PROTOCOL_ERROR) return res;
    memop_params *m = (memop_params *)malloc(sizeof *m);
    CUresult pr = m ? get_params(S, r, m) : CUDA_ERROR_OUT_OF_MEMORY;
    if (pr == FGS_PROTOCOL_ERROR || res == CUDA_SUCCESS) res = pr;
    if (res == CUDA_SUCCESS && !S->api->cuGraphBatchMemOpNodeSetParams) res = fgs_missing(S, "cuGraphBatchMemOpNodeSetParams");
    if (res == CUDA_SUCCESS) res = S->api->cuGraphBatchMemOpNodeSetParams((CUgraphNode)node, &m->p);
    free(m);
    return res;
}

CUresult fgs_cuGraphExecBatchMemOpNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    void *exec, *node;
    CUresult res = get_node(S, r, FGH_GRAPHEXEC, &exec);
    CUresult nr = res == FGS_PROTOCOL_ERROR ? res : get_node(S, r, FGH_GRAPHNODE, &node);
    if (nr == FGS_PROTOCOL_ERROR) return nr;
    if (res == CUDA_SUCCESS) res = nr;
    memop_params *m = (memop_params *)malloc(sizeof *m);
    CUresult pr = m ? get_params(S, r, m) : CUDA_ERROR_OUT_OF_MEMORY;
    if (pr == FGS_PROTOCOL_ERROR || res == CUDA_SUCCESS) res = pr;
    if (res == CUDA_SUCCESS && !S->api->cuGraphExecBatchMemOpNodeSetParams)
        res = fgs_missing(S, "cuGraphExecBatchMemOpNodeSetParams");
    if (res == CUDA_SUCCESS)
        res = S->api->cuGraphExecBatchMemOpNodeSetParams((CUgraphExec)exec, (CUgraphNode)node, &m->p);
    free(m);
    return res;
}
