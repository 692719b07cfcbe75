/* graph_node_params.c — the generic node API (cuGraphAddNode, cuGraphNodeSetParams, cuGraphExecNodeSetParams):
 * each node kind the stub supports is passed to its own call (graph_build.c, or the generated ones), so the node
 * behaves exactly as one made with the per-kind API (memory allocation and free nodes: graph_mem.c; conditional
 * nodes, which have no per-kind call, go to the node as cuGraphAddNode_v2: graph_cond.c). Batch memory-operation and external-semaphore nodes, edge data other than the default, and child graphs moved
 * into their parent are refused with CUDA_ERROR_NOT_SUPPORTED; so are parameter changes of memory nodes, which
 * the driver refuses too. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static CUresult refuse(const char *what) {
    static int logged;
    return fgc_unsupported(what, &logged);
}

static int default_edges(const CUgraphEdgeData *e, size_t n) {
    static const CUgraphEdgeData zero;
    for (size_t i = 0; e && i < n; i++)
        if (memcmp(&e[i], &zero, sizeof zero)) return 0;
    return 1;
}

static CUDA_MEMSET_NODE_PARAMS memset_v1(const CUDA_MEMSET_NODE_PARAMS_v2 *m) {
    CUDA_MEMSET_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.dst = m->dst;
    p.pitch = m->pitch;
    p.value = m->value;
    p.elementSize = m->elementSize;
    p.width = m->width;
    p.height = m->height;
    return p;
}

static CUresult add(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUgraphNodeParams *p) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
        /* CUDA_KERNEL_NODE_PARAMS_v3 begins as CUDA_KERNEL_NODE_PARAMS (v2) does, field for field */
        return fgc_cuGraphAddKernelNode_v2(ph, g, deps, n, (const CUDA_KERNEL_NODE_PARAMS *)&p->kernel);
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        if (p->memcpy.flags) return CUDA_ERROR_INVALID_VALUE;
        return fgc_cuGraphAddMemcpyNode(ph, g, deps, n, &p->memcpy.copyParams, p->memcpy.copyCtx);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS m = memset_v1(&p->memset);
        return fgc_cuGraphAddMemsetNode(ph, g, deps, n, &m, p->memset.ctx);
    }
    case CU_GRAPH_NODE_TYPE_HOST: {
        CUDA_HOST_NODE_PARAMS h = {p->host.fn, p->host.userData};
        return fgc_cuGraphAddHostNode(ph, g, deps, n, &h);
    }
    case CU_GRAPH_NODE_TYPE_GRAPH:
        if (p->graph.ownership != CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE)
            return refuse("cuGraphAddNode of a child graph moved into its parent");
        return fgc_cuGraphAddChildGraphNode(ph, g, deps, n, p->graph.graph);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD: return fgc_cuGraphAddEventRecordNode(ph, g, deps, n, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT: return fgc_cuGraphAddEventWaitNode(ph, g, deps, n, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_EMPTY: return fgc_cuGraphAddEmptyNode(ph, g, deps, n);
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC:
        /* CUDA_MEM_ALLOC_NODE_PARAMS_v2 is CUDA_MEM_ALLOC_NODE_PARAMS (v1) field for field; dptr comes back */
        return fgc_cuGraphAddMemAllocNode(ph, g, deps, n, (CUDA_MEM_ALLOC_NODE_PARAMS *)&p->alloc);
    case CU_GRAPH_NODE_TYPE_MEM_FREE: return fgc_cuGraphAddMemFreeNode(ph, g, deps, n, p->free.dptr);
    case CU_GRAPH_NODE_TYPE_CONDITIONAL: return fgc_graph_add_conditional(ph, g, deps, n, &p->conditional);
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP: /* CUDA_BATCH_MEM_OP_NODE_PARAMS_v2 is v1 field for field */
        return fgc_cuGraphAddBatchMemOpNode(ph, g, deps, n, (const CUDA_BATCH_MEM_OP_NODE_PARAMS *)&p->memOp);
    default: return refuse("cuGraphAddNode of an external-semaphore node");
    }
}

CUresult fgc_cuGraphAddNode_v2(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, const CUgraphEdgeData *edges,
                               size_t n, CUgraphNodeParams *p) {
    if (!default_edges(edges, n)) return refuse("cuGraphAddNode with edge data other than the default");
    return add(ph, g, deps, n, p);
}

CUresult fgc_cuGraphAddNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUgraphNodeParams *p) {
    return add(ph, g, deps, n, p);
}

CUresult fgc_cuGraphNodeSetParams(CUgraphNode node, CUgraphNodeParams *p) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
        return fgc_cuGraphKernelNodeSetParams_v2(node, (const CUDA_KERNEL_NODE_PARAMS *)&p->kernel);
    case CU_GRAPH_NODE_TYPE_MEMCPY: return fgc_cuGraphMemcpyNodeSetParams(node, &p->memcpy.copyParams);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS m = memset_v1(&p->memset);
        return cuGraphMemsetNodeSetParams(node, &m);
    }
    case CU_GRAPH_NODE_TYPE_HOST: {
        CUDA_HOST_NODE_PARAMS h = {p->host.fn, p->host.userData};
        return fgc_cuGraphHostNodeSetParams(node, &h);
    }
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD: return cuGraphEventRecordNodeSetEvent(node, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT: return cuGraphEventWaitNodeSetEvent(node, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP:
        return fgc_cuGraphBatchMemOpNodeSetParams(node, (const CUDA_BATCH_MEM_OP_NODE_PARAMS *)&p->memOp);
    default: return refuse("cuGraphNodeSetParams for this node type");
    }
}

CUresult fgc_cuGraphExecNodeSetParams(CUgraphExec e, CUgraphNode node, CUgraphNodeParams *p) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
        return fgc_cuGraphExecKernelNodeSetParams_v2(e, node, (const CUDA_KERNEL_NODE_PARAMS *)&p->kernel);
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        return fgc_cuGraphExecMemcpyNodeSetParams(e, node, &p->memcpy.copyParams, p->memcpy.copyCtx);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS m = memset_v1(&p->memset);
        return cuGraphExecMemsetNodeSetParams(e, node, &m, p->memset.ctx);
    }
    case CU_GRAPH_NODE_TYPE_HOST: {
        CUDA_HOST_NODE_PARAMS h = {p->host.fn, p->host.userData};
        return fgc_cuGraphExecHostNodeSetParams(e, node, &h);
    }
    case CU_GRAPH_NODE_TYPE_GRAPH: return cuGraphExecChildGraphNodeSetParams(e, node, p->graph.graph);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD: return cuGraphExecEventRecordNodeSetEvent(e, node, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT: return cuGraphExecEventWaitNodeSetEvent(e, node, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP:
        return fgc_cuGraphExecBatchMemOpNodeSetParams(e, node, (const CUDA_BATCH_MEM_OP_NODE_PARAMS *)&p->memOp);
    default: return refuse("cuGraphExecNodeSetParams for this node type");
    }
}
