/* sim_graph_query.c - what the simulated device's graphs answer when asked about themselves: root nodes, edges,
 * a node's dependencies and dependents (edge data is always the default: the simulated device keeps none; with
 * an array, at most *num entries are written, the rest of it NULL, and *num says how many), and
 * the parameters of kernel, memcpy and host nodes, and the child graph of a child-graph node (owned by its node,
 * as the driver's is), and kernel node attributes (kept per node, not acted on). Kernel parameters come back as kernelParams, an array of pointers into the node's own
 * copy of the parameter buffer, valid until the node's parameters change or the node goes, as the driver's. */
#include "sim_graph.h"

#include <stdlib.h>
#include <string.h>

/* Fills out[] up to *num with the matching nodes (NULL out: count only), sets *num to the match count; with
 * edges, the default edge data for the ones written. Native semantics: *num in, the count out. */
static void put_nodes(CUgraphNode *out, CUgraphEdgeData *edges, size_t *num, struct sim_gnode **v, size_t n)
{
    if (!out) {
        *num = n;
        return;
    }
    for (size_t i = 0; i < *num; i++) { /* entries past the last node are NULL */
        out[i] = i < n ? (CUgraphNode)v[i] : NULL;
        if (edges)
            memset(&edges[i], 0, sizeof edges[i]);
    }
    if (n < *num)
        *num = n;
}

static CUresult roots(struct sim_graph *g, CUgraphNode *out, size_t *num)
{
    if (!g || !num)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode **v = malloc((g->n ? g->n : 1) * sizeof *v);
    if (!v)
        return CUDA_ERROR_OUT_OF_MEMORY;
    size_t k = 0;
    for (size_t i = 0; i < g->n; i++)
        if (g->nodes[i]->n_deps == 0)
            v[k++] = g->nodes[i];
    put_nodes(out, NULL, num, v, k);
    free(v);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphGetRootNodes(CUgraph g, CUgraphNode *out, size_t *num) { LOCKED(roots(G(g), out, num)); }

static CUresult edges(struct sim_graph *g, CUgraphNode *from, CUgraphNode *to, CUgraphEdgeData *ed, size_t *num)
{
    if (!g || !num || (!from) != (!to))
        return CUDA_ERROR_INVALID_VALUE;
    size_t k = 0;
    for (size_t i = 0; from && i < *num; i++)
        from[i] = to[i] = NULL;
    for (size_t i = 0; i < g->n; i++)
        for (size_t j = 0; j < g->nodes[i]->n_deps; j++) {
            if (from && k < *num && g->nodes[i]->deps[j] < g->n) {
                from[k] = (CUgraphNode)g->nodes[g->nodes[i]->deps[j]];
                to[k] = (CUgraphNode)g->nodes[i];
                if (ed)
                    memset(&ed[k], 0, sizeof ed[k]);
            }
            k++;
        }
    if (!from || k < *num)
        *num = k;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphGetEdges_v2(CUgraph g, CUgraphNode *from, CUgraphNode *to, CUgraphEdgeData *ed, size_t *num)
{
    LOCKED(edges(G(g), from, to, ed, num));
}

static CUresult related(struct sim_gnode *x, CUgraphNode *out, CUgraphEdgeData *ed, size_t *num, int dependents)
{
    if (!x || !num)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *g = x->g;
    struct sim_gnode **v = malloc((g->n ? g->n : 1) * sizeof *v);
    if (!v)
        return CUDA_ERROR_OUT_OF_MEMORY;
    size_t k = 0;
    if (dependents) {
        for (size_t i = 0; i < g->n; i++)
            for (size_t j = 0; j < g->nodes[i]->n_deps; j++)
                if (g->nodes[i]->deps[j] == x->index) {
                    v[k++] = g->nodes[i];
                    break;
                }
    } else {
        for (size_t j = 0; j < x->n_deps && k < g->n; j++)
            if (x->deps[j] < g->n)
                v[k++] = g->nodes[x->deps[j]];
    }
    put_nodes(out, ed, num, v, k);
    free(v);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphNodeGetDependencies_v2(CUgraphNode n, CUgraphNode *out, CUgraphEdgeData *ed, size_t *num)
{
    LOCKED(related(N(n), out, ed, num, 0));
}
SIM_API CUresult cuGraphNodeGetDependentNodes_v2(CUgraphNode n, CUgraphNode *out, CUgraphEdgeData *ed, size_t *num)
{
    LOCKED(related(N(n), out, ed, num, 1));
}

static CUresult kernel_get(struct sim_gnode *x, CUDA_KERNEL_NODE_PARAMS_v2 *p)
{
    if (!x || !p || x->type != CU_GRAPH_NODE_TYPE_KERNEL)
        return CUDA_ERROR_INVALID_VALUE;
    size_t off, sz, n = 0;
    while (cuFuncGetParamInfo(x->k.func, n, &off, &sz) == CUDA_SUCCESS)
        n++;
    free(x->kparams);
    x->kparams = calloc(n ? n : 1, sizeof *x->kparams);
    if (!x->kparams)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++)
        if (cuFuncGetParamInfo(x->k.func, i, &off, &sz) == CUDA_SUCCESS && off + sz <= x->ksize)
            x->kparams[i] = x->kbuf + off;
    *p = x->k;
    p->kern = NULL; /* the driver reports the function, whichever way the node was made */
    p->ctx = NULL;
    p->kernelParams = x->kparams;
    p->extra = NULL;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode n, CUDA_KERNEL_NODE_PARAMS_v2 *p) { LOCKED(kernel_get(N(n), p)); }

static CUresult memcpy_get(struct sim_gnode *x, CUDA_MEMCPY3D *c)
{
    if (!x || !c || x->type != CU_GRAPH_NODE_TYPE_MEMCPY)
        return CUDA_ERROR_INVALID_VALUE;
    *c = x->mc;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphMemcpyNodeGetParams(CUgraphNode n, CUDA_MEMCPY3D *c) { LOCKED(memcpy_get(N(n), c)); }

static CUresult host_get(struct sim_gnode *x, CUDA_HOST_NODE_PARAMS *p)
{
    if (!x || !p || x->type != CU_GRAPH_NODE_TYPE_HOST)
        return CUDA_ERROR_INVALID_VALUE;
    *p = x->host;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphHostNodeGetParams(CUgraphNode n, CUDA_HOST_NODE_PARAMS *p) { LOCKED(host_get(N(n), p)); }

static CUresult child_get(struct sim_gnode *x, CUgraph *out)
{
    if (!x || !out || x->type != CU_GRAPH_NODE_TYPE_GRAPH || !x->child)
        return CUDA_ERROR_INVALID_VALUE;
    *out = (CUgraph)x->child;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphChildGraphNodeGetGraph(CUgraphNode n, CUgraph *out) { LOCKED(child_get(N(n), out)); }

/* Kernel node attributes: kept per node (copied with it), an unset one reads as zero. */
static CUresult attr_get(struct sim_gnode *x, CUkernelNodeAttrID a, CUkernelNodeAttrValue *v)
{
    if (!x || !v || x->type != CU_GRAPH_NODE_TYPE_KERNEL || (unsigned)a >= 32 || a == 0)
        return CUDA_ERROR_INVALID_VALUE;
    *v = x->attrs[a];
    return CUDA_SUCCESS;
}
static CUresult attr_set(struct sim_gnode *x, CUkernelNodeAttrID a, const CUkernelNodeAttrValue *v)
{
    if (!x || !v || x->type != CU_GRAPH_NODE_TYPE_KERNEL || (unsigned)a >= 32 || a == 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* A cooperative launch takes no `extra` buffer (cuLaunchCooperativeKernel has none): the H100 (driver 580)
     * refused the attribute on a node made with one (api_graph_nodes, 2026-12-07). */
    if (a == CU_LAUNCH_ATTRIBUTE_COOPERATIVE && v->cooperative && x->kextra)
        return CUDA_ERROR_INVALID_VALUE;
    x->attrs[a] = *v;
    return CUDA_SUCCESS;
}
static CUresult attr_copy(struct sim_gnode *d, struct sim_gnode *s)
{
    if (!d || !s || d->type != CU_GRAPH_NODE_TYPE_KERNEL || s->type != CU_GRAPH_NODE_TYPE_KERNEL)
        return CUDA_ERROR_INVALID_VALUE;
    memcpy(d->attrs, s->attrs, sizeof d->attrs);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphKernelNodeGetAttribute(CUgraphNode n, CUkernelNodeAttrID a, CUkernelNodeAttrValue *v)
{
    LOCKED(attr_get(N(n), a, v));
}
SIM_API CUresult cuGraphKernelNodeSetAttribute(CUgraphNode n, CUkernelNodeAttrID a, const CUkernelNodeAttrValue *v)
{
    LOCKED(attr_set(N(n), a, v));
}
SIM_API CUresult cuGraphKernelNodeCopyAttributes(CUgraphNode d, CUgraphNode s) { LOCKED(attr_copy(N(d), N(s))); }
