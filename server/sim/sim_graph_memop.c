/* sim_graph_memop.c - batch memory-operation graph nodes on the simulated device: cuGraphAddBatchMemOpNode,
 * cuGraphBatchMemOpNodeGetParams, cuGraphBatchMemOpNodeSetParams and cuGraphExecBatchMemOpNodeSetParams. A node
 * keeps its own copy of the operations (GetParams hands out that copy, valid until the node's parameters change or
 * it goes, as the driver's); the operations are checked as cuStreamBatchMemOp_v2 checks them (sim_memop.c) when
 * they are given, and run, in order, when the executable graph runs the node. The context must be a live one; the
 * flags must be 0. */
#include "sim_graph.h"

#include <stdlib.h>
#include <string.h>

#define MAX_OPS 255

/* Checks the parameters against the device (global lock, before the graph lock is taken). */
static CUresult check(const CUDA_BATCH_MEM_OP_NODE_PARAMS *p)
{
    if (!p || p->flags || p->count > MAX_OPS || (p->count && !p->paramArray))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && !sim_reg_find(p->ctx, SIM_KIND_CTX))
        rc = CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; rc == CUDA_SUCCESS && i < p->count; i++)
        rc = sim_memop_check(&p->paramArray[i]);
    sim_unlock();
    return rc;
}

/* Replaces node x's operations with a copy of p's (graph lock held). */
static CUresult store(struct sim_gnode *x, const CUDA_BATCH_MEM_OP_NODE_PARAMS *p)
{
    if (!x || x->type != CU_GRAPH_NODE_TYPE_BATCH_MEM_OP)
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamBatchMemOpParams *ops = p->count ? malloc(p->count * sizeof *ops) : NULL;
    if (p->count && !ops)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (p->count)
        memcpy(ops, p->paramArray, p->count * sizeof *ops);
    free(x->memops);
    x->memops = ops;
    x->n_memops = p->count;
    x->memop_ctx = p->ctx;
    return CUDA_SUCCESS;
}

static CUresult add(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_BATCH_MEM_OP_NODE_PARAMS *p)
{
    struct sim_gnode *x;
    CUresult rc = sim_graph_add(ph, g, d, n, &x);
    if (rc != CUDA_SUCCESS)
        return rc;
    x->type = CU_GRAPH_NODE_TYPE_BATCH_MEM_OP;
    return store(x, p);
}

SIM_API CUresult cuGraphAddBatchMemOpNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                          size_t numDependencies, const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams)
{
    CUresult rc = check(nodeParams);
    if (rc != CUDA_SUCCESS)
        return rc;
    LOCKED(add(phGraphNode, hGraph, dependencies, numDependencies, nodeParams));
}

static CUresult get(struct sim_gnode *x, CUDA_BATCH_MEM_OP_NODE_PARAMS *out)
{
    if (!x || !out || x->type != CU_GRAPH_NODE_TYPE_BATCH_MEM_OP)
        return CUDA_ERROR_INVALID_VALUE;
    out->ctx = x->memop_ctx;
    out->count = x->n_memops;
    out->paramArray = x->memops;
    out->flags = 0;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuGraphBatchMemOpNodeGetParams(CUgraphNode hNode, CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams_out)
{
    LOCKED(get(N(hNode), nodeParams_out));
}

SIM_API CUresult cuGraphBatchMemOpNodeSetParams(CUgraphNode hNode, const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams)
{
    CUresult rc = check(nodeParams);
    if (rc != CUDA_SUCCESS)
        return rc;
    LOCKED(store(N(hNode), nodeParams));
}

/* The node of executable e made from graph node n. */
static struct sim_gnode *exec_node(struct sim_graph *e, struct sim_gnode *n)
{
    for (size_t i = 0; e && n && i < e->n; i++)
        if (e->nodes[i]->origin == n)
            return e->nodes[i];
    return NULL;
}

SIM_API CUresult cuGraphExecBatchMemOpNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                                    const CUDA_BATCH_MEM_OP_NODE_PARAMS *nodeParams)
{
    CUresult rc = check(nodeParams);
    if (rc != CUDA_SUCCESS)
        return rc;
    LOCKED(store(exec_node(E(hGraphExec), N(hNode)), nodeParams));
}
