/* graph_memop.c — batch memory-operation graph nodes (server/replay/graph_memop.c has the record layouts):
 * cuGraphAddBatchMemOpNode, cuGraphBatchMemOpNodeGetParams, cuGraphBatchMemOpNodeSetParams and
 * cuGraphExecBatchMemOpNodeSetParams. As for cuStreamBatchMemOp_v2 (memops.c), every wait and write must name
 * device memory of the node; host memory is refused with CUDA_ERROR_NOT_SUPPORTED. GetParams hands out an array
 * kept here per node, valid until the next query of that node (the driver's own stays valid until the node's
 * parameters change), as graph_query.c does for kernel parameters. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_OPS 256
#define MAX_DEPS 4096

static int device_address(uint64_t p, uint64_t n) {
    uint64_t base = 0, size = 0;
    return fgc_device_range_find(p, &base, &size) && p - base <= size && n <= size - (p - base);
}

/* Checks what the stub must: the array's presence and size, and that the memory is the node's. */
static CUresult check(const CUDA_BATCH_MEM_OP_NODE_PARAMS *p) {
    if (!p || p->count > MAX_OPS || (p->count && !p->paramArray)) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < p->count; i++) {
        const CUstreamBatchMemOpParams *o = &p->paramArray[i];
        uint64_t n = o->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || o->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32
                         ? 4
                     : o->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || o->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64
                         ? 8
                         : 0;
        if (n && !device_address(o->waitValue.address, n)) {
            static int logged;
            return fgc_unsupported("a batch memory-operation node on memory that is not device memory of the node",
                                   &logged);
        }
    }
    return CUDA_SUCCESS;
}

static void put_params(fg_writer *w, const CUDA_BATCH_MEM_OP_NODE_PARAMS *p) {
    fgc_put_handle(w, p->ctx);
    fg_put_u32(w, p->count);
    fg_put_u32(w, p->flags);
    if (p->count) fg_put(w, p->paramArray, (size_t)p->count * sizeof *p->paramArray);
}

CUresult fgc_cuGraphAddBatchMemOpNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                      size_t numDependencies, const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams) {
    FGC_REQUIRE_INIT();
    if (!phGraphNode || (numDependencies && !dependencies) || numDependencies > MAX_DEPS)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = check(nodeParams);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphAddBatchMemOpNode);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hGraph);
    fg_put_u64(w, numDependencies);
    for (size_t i = 0; i < numDependencies; i++) fgc_put_handle(w, dependencies[i]);
    put_params(w, nodeParams);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    r = fgc_sync();
    if (r == CUDA_SUCCESS) *phGraphNode = (CUgraphNode)(uintptr_t)id;
    return r;
}

typedef struct kept {
    uint64_t node;
    CUstreamBatchMemOpParams *ops;
    struct kept *next;
} kept;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static kept *g_kept;

/* Keeps ops (taking ownership) as node's array, freeing the one it had. */
static void keep(uint64_t node, CUstreamBatchMemOpParams *ops) {
    pthread_mutex_lock(&g_mu);
    kept *k = g_kept;
    while (k && k->node != node) k = k->next;
    if (!k && (k = (kept *)calloc(1, sizeof *k))) {
        k->node = node;
        k->next = g_kept;
        g_kept = k;
    }
    if (k) {
        free(k->ops);
        k->ops = ops;
    }
    pthread_mutex_unlock(&g_mu);
    if (!k) free(ops);
}

CUresult fgc_cuGraphBatchMemOpNodeGetParams(CUgraphNode hNode, CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams_out) {
    FGC_REQUIRE_INIT();
    if (!nodeParams_out) return CUDA_ERROR_INVALID_VALUE;
    size_t cap = 16 + MAX_OPS * sizeof(CUstreamBatchMemOpParams);
    uint8_t *reply = NULL;
    CUresult r;
    fg_writer *w = fgc_begin_var(FG_OP_cuGraphBatchMemOpNodeGetParams, cap, &reply, &r);
    if (!w) return r;
    fgc_put_handle(w, hNode);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(reply, cap, &rd)) != CUDA_SUCCESS) return r;
    uint64_t ctx = fg_get_u64(&rd);
    uint32_t count = fg_get_u32(&rd), flags = fg_get_u32(&rd);
    CUstreamBatchMemOpParams *ops = NULL;
    if (!rd.failed && count <= MAX_OPS && fg_reader_left(&rd) == (size_t)count * sizeof *ops) {
        ops = (CUstreamBatchMemOpParams *)malloc(count ? count * sizeof *ops : 1);
        if (ops) fg_get(&rd, ops, (size_t)count * sizeof *ops);
        r = ops ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        r = CUDA_ERROR_UNKNOWN;
    }
    free(reply);
    if (r != CUDA_SUCCESS) return r;
    nodeParams_out->ctx = (CUcontext)(uintptr_t)ctx;
    nodeParams_out->count = count;
    nodeParams_out->paramArray = ops;
    nodeParams_out->flags = flags;
    keep(fgc_handle_id(hNode), ops);
    return CUDA_SUCCESS;
}

CUresult fgc_cuGraphBatchMemOpNodeSetParams(CUgraphNode hNode, const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams) {
    FGC_REQUIRE_INIT();
    CUresult r = check(nodeParams);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphBatchMemOpNodeSetParams);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hNode);
    put_params(w, nodeParams);
    return fgc_sync();
}

CUresult fgc_cuGraphExecBatchMemOpNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams) {
    FGC_REQUIRE_INIT();
    CUresult r = check(nodeParams);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecBatchMemOpNodeSetParams);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hGraphExec);
    fgc_put_handle(w, hNode);
    put_params(w, nodeParams);
    return fgc_sync();
}
