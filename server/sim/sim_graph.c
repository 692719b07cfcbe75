/* sim_graph.c - CUDA graphs on the simulated device: graphs built by hand, instantiated and launched. Streams run
 * synchronously here, so launching an executable graph runs its nodes at once, one at a time, in an order that
 * respects every dependency (nodes in the order they were added, each after its dependencies). Nodes: empty,
 * kernel (through cuLaunchKernel, with the packed parameter buffer or kernelParams), memset (row by row), memcpy
 * (device and host memory; arrays are not simulated), event record and wait, child graph (a copy of the child,
 * as the driver makes), host (called in place), batch memory operations (sim_graph_memop.c). An executable is a copy of the graph; its nodes keep the index
 * of the node they came from, which is how executable-node updates and cuGraphExecUpdate find them. Disabled
 * nodes are skipped. Stream capture builds graphs through the same calls (sim_capture.c). What graphs say about
 * themselves (edges, roots, node parameters) is in sim_graph_query.c.
 *
 * Graph structures have their own lock; driver calls a launch makes take the global lock themselves, so none is
 * held while a node runs (a host node may call back into the driver). */
#include "sim_graph.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

pthread_mutex_t sim_graph_mu = PTHREAD_MUTEX_INITIALIZER;

static void graph_free(struct sim_graph *g);

static void node_free(struct sim_gnode *x) {
    free(x->deps);
    free(x->kbuf);
    free(x->kparams);
    if (x->child) graph_free(x->child);
    for (unsigned i = 0; x->bodies && i < x->nbodies; i++)
        if (x->bodies[i]) graph_free(x->bodies[i]);
    free(x->bodies);
    free(x->memops);
    free(x);
}

static void graph_free(struct sim_graph *g) {
    sim_uobj_graph_release_all(g);
    for (size_t i = 0; i < g->n; i++) node_free(g->nodes[i]);
    free(g->nodes);
    g->magic = 0;
    free(g);
}

static struct sim_graph *graph_new(int is_exec) {
    struct sim_graph *g = calloc(1, sizeof *g);
    if (g) {
        g->magic = GMAGIC;
        g->is_exec = is_exec;
    }
    return g;
}

static int kernel_copy(struct sim_gnode *x, const CUDA_KERNEL_NODE_PARAMS_v2 *p)
{
    x->k = *p;
    free(x->kparams);
    x->kparams = NULL;
    if (!x->k.func)
        x->k.func = (CUfunction)p->kern;
    free(x->kbuf);
    x->kbuf = NULL;
    x->ksize = 0;
    x->kextra = p->extra != NULL;
    if (p->extra) {
        const void *buf = NULL;
        size_t size = 0;
        for (int i = 0; i < 64 && p->extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (p->extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER)
                buf = p->extra[i + 1];
            else if (p->extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && p->extra[i + 1])
                size = *(size_t *)p->extra[i + 1];
        }
        if (!buf && size)
            return -1;
        x->kbuf = malloc(size ? size : 1);
        if (!x->kbuf)
            return -1;
        memcpy(x->kbuf, buf, size);
        x->ksize = size;
    } else if (p->kernelParams) {
        size_t off, sz, end = 0, i;
        for (i = 0; cuFuncGetParamInfo(x->k.func, i, &off, &sz) == CUDA_SUCCESS; i++)
            if (off + sz > end)
                end = off + sz;
        x->kbuf = calloc(1, end ? end : 1);
        if (!x->kbuf)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (cuFuncGetParamInfo(x->k.func, j, &off, &sz) == CUDA_SUCCESS && p->kernelParams[j])
                memcpy(x->kbuf + off, p->kernelParams[j], sz);
        x->ksize = end;
    }
    x->k.kernelParams = NULL;
    x->k.extra = NULL;
    return 0;
}

static struct sim_graph *graph_clone(const struct sim_graph *g, int is_exec);

/* A copy of node x for graph g (index kept). */
static struct sim_gnode *node_clone(const struct sim_gnode *x, struct sim_graph *g)
{
    struct sim_gnode *y = calloc(1, sizeof *y);
    if (!y)
        return NULL;
    *y = *x;
    y->g = g;
    y->origin = (struct sim_gnode *)x;
    y->kparams = NULL;
    y->deps = x->n_deps ? malloc(x->n_deps * sizeof *y->deps) : NULL;
    y->kbuf = x->kbuf ? malloc(x->ksize ? x->ksize : 1) : NULL;
    y->child = x->child ? graph_clone(x->child, 0) : NULL;
    y->bodies = x->nbodies ? calloc(x->nbodies, sizeof *y->bodies) : NULL;
    y->memops = x->n_memops ? malloc(x->n_memops * sizeof *y->memops) : NULL;
    int bad = (x->n_deps && !y->deps) || (x->kbuf && !y->kbuf) || (x->child && !y->child) || (x->nbodies && !y->bodies) ||
              (x->n_memops && !y->memops);
    for (unsigned i = 0; !bad && i < x->nbodies; i++)
        bad = !(y->bodies[i] = graph_clone(x->bodies[i], 0));
    if (bad) { /* every pointer in y is its own (or NULL) by now */
        node_free(y);
        return NULL;
    }
    if (x->n_deps)
        memcpy(y->deps, x->deps, x->n_deps * sizeof *y->deps);
    if (x->kbuf)
        memcpy(y->kbuf, x->kbuf, x->ksize);
    if (x->n_memops)
        memcpy(y->memops, x->memops, x->n_memops * sizeof *y->memops);
    return y;
}

static struct sim_graph *graph_clone(const struct sim_graph *g, int is_exec)
{
    struct sim_graph *c = graph_new(is_exec);
    if (!c)
        return NULL;
    if (sim_uobj_graph_copy(c, g)) {
        graph_free(c);
        return NULL;
    }
    c->nodes = g->n ? calloc(g->n, sizeof *c->nodes) : NULL;
    c->cap = g->n;
    for (size_t i = 0; i < g->n; i++) {
        struct sim_gnode *y = c->nodes ? node_clone(g->nodes[i], c) : NULL;
        if (!y) {
            graph_free(c);
            return NULL;
        }
        c->nodes[c->n++] = y;
    }
    return c;
}

static CUresult add(CUgraphNode *ph, CUgraph hg, const CUgraphNode *deps, size_t n, struct sim_gnode **out)
{
    struct sim_graph *g = G(hg);
    if (!ph || !g || (n && !deps) || g->n >= MAX_NODES)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x = calloc(1, sizeof *x);
    if (!x)
        return CUDA_ERROR_OUT_OF_MEMORY;
    x->deps = n ? malloc(n * sizeof *x->deps) : NULL;
    for (size_t i = 0; i < n; i++) {
        struct sim_gnode *d = N(deps[i]);
        if (!d || d->g != g) {
            free(x->deps);
            free(x);
            return CUDA_ERROR_INVALID_VALUE;
        }
        x->deps[i] = d->index;
    }
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 16;
        struct sim_gnode **nn = realloc(g->nodes, cap * sizeof *nn);
        if (!nn) {
            free(x->deps);
            free(x);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        g->nodes = nn;
        g->cap = cap;
    }
    x->g = g;
    x->index = g->n;
    x->n_deps = n;
    x->enabled = 1;
    g->nodes[g->n++] = x;
    *out = x;
    *ph = (CUgraphNode)x;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuGraphCreate(CUgraph *phGraph, unsigned int flags)
{
    if (!phGraph || flags)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *g = graph_new(0);
    if (!g)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *phGraph = (CUgraph)g;
    return CUDA_SUCCESS;
}

static CUresult destroy(struct sim_graph *g)
{
    if (!g)
        return CUDA_ERROR_INVALID_VALUE;
    graph_free(g);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuGraphDestroy(CUgraph g) { LOCKED(destroy(G(g))); }
SIM_API CUresult cuGraphExecDestroy(CUgraphExec e) { LOCKED(destroy(E(e))); }

static CUresult add_empty(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n)
{
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc == CUDA_SUCCESS)
        x->type = CU_GRAPH_NODE_TYPE_EMPTY;
    return rc;
}
SIM_API CUresult cuGraphAddEmptyNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n) { LOCKED(add_empty(ph, g, d, n)); }

static CUresult add_kernel(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_KERNEL_NODE_PARAMS_v2 *p)
{
    if (!p || (!p->func && !p->kern))
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc != CUDA_SUCCESS)
        return rc;
    x->type = CU_GRAPH_NODE_TYPE_KERNEL;
    return kernel_copy(x, p) ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}
SIM_API CUresult cuGraphAddKernelNode_v2(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n,
                                         const CUDA_KERNEL_NODE_PARAMS_v2 *p) { LOCKED(add_kernel(ph, g, d, n, p)); }

static CUresult set_kernel(struct sim_gnode *x, const CUDA_KERNEL_NODE_PARAMS_v2 *p)
{
    if (!x || !p || x->type != CU_GRAPH_NODE_TYPE_KERNEL)
        return CUDA_ERROR_INVALID_VALUE;
    return kernel_copy(x, p) ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

/* The node of executable e made from graph node n. */
static struct sim_gnode *exec_node(struct sim_graph *e, struct sim_gnode *n)
{
    if (!e || !n)
        return NULL;
    for (size_t i = 0; i < e->n; i++)
        if (e->nodes[i]->origin == n)
            return e->nodes[i];
    /* A node of the graph an update took parameters from: the same index and type. */
    if (n->index < e->n && e->nodes[n->index]->type == n->type)
        return e->nodes[n->index];
    return NULL;
}

SIM_API CUresult cuGraphKernelNodeSetParams_v2(CUgraphNode n, const CUDA_KERNEL_NODE_PARAMS_v2 *p) { LOCKED(set_kernel(N(n), p)); }
SIM_API CUresult cuGraphExecKernelNodeSetParams_v2(CUgraphExec e, CUgraphNode n, const CUDA_KERNEL_NODE_PARAMS_v2 *p)
{
    LOCKED(set_kernel(exec_node(E(e), N(n)), p));
}

static CUresult add_memset(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_MEMSET_NODE_PARAMS *p)
{
    if (!p || (p->elementSize != 1 && p->elementSize != 2 && p->elementSize != 4) || !p->width || !p->height)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc == CUDA_SUCCESS) {
        x->type = CU_GRAPH_NODE_TYPE_MEMSET;
        x->ms = *p;
    }
    return rc;
}
SIM_API CUresult cuGraphAddMemsetNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n,
                                      const CUDA_MEMSET_NODE_PARAMS *p, CUcontext ctx)
{
    (void)ctx;
    LOCKED(add_memset(ph, g, d, n, p));
}

static CUresult get_memset(struct sim_gnode *x, CUDA_MEMSET_NODE_PARAMS *p)
{
    if (!x || !p || x->type != CU_GRAPH_NODE_TYPE_MEMSET)
        return CUDA_ERROR_INVALID_VALUE;
    *p = x->ms;
    return CUDA_SUCCESS;
}
static CUresult set_memset(struct sim_gnode *x, const CUDA_MEMSET_NODE_PARAMS *p)
{
    if (!x || !p || x->type != CU_GRAPH_NODE_TYPE_MEMSET || (p->elementSize != 1 && p->elementSize != 2 && p->elementSize != 4))
        return CUDA_ERROR_INVALID_VALUE;
    x->ms = *p;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphMemsetNodeGetParams(CUgraphNode n, CUDA_MEMSET_NODE_PARAMS *p) { LOCKED(get_memset(N(n), p)); }
SIM_API CUresult cuGraphMemsetNodeSetParams(CUgraphNode n, const CUDA_MEMSET_NODE_PARAMS *p) { LOCKED(set_memset(N(n), p)); }
SIM_API CUresult cuGraphExecMemsetNodeSetParams(CUgraphExec e, CUgraphNode n, const CUDA_MEMSET_NODE_PARAMS *p, CUcontext c)
{
    (void)c;
    LOCKED(set_memset(exec_node(E(e), N(n)), p));
}

static int copy_ok(const CUDA_MEMCPY3D *c)
{
    return c && c->srcMemoryType != CU_MEMORYTYPE_ARRAY && c->dstMemoryType != CU_MEMORYTYPE_ARRAY && c->WidthInBytes;
}
static CUresult add_memcpy(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_MEMCPY3D *c)
{
    if (!copy_ok(c))
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc == CUDA_SUCCESS) {
        x->type = CU_GRAPH_NODE_TYPE_MEMCPY;
        x->mc = *c;
    }
    return rc;
}
SIM_API CUresult cuGraphAddMemcpyNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_MEMCPY3D *c,
                                      CUcontext ctx)
{
    (void)ctx;
    LOCKED(add_memcpy(ph, g, d, n, c));
}
static CUresult set_memcpy(struct sim_gnode *x, const CUDA_MEMCPY3D *c)
{
    if (!x || !copy_ok(c) || x->type != CU_GRAPH_NODE_TYPE_MEMCPY)
        return CUDA_ERROR_INVALID_VALUE;
    x->mc = *c;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphMemcpyNodeSetParams(CUgraphNode n, const CUDA_MEMCPY3D *c) { LOCKED(set_memcpy(N(n), c)); }
SIM_API CUresult cuGraphExecMemcpyNodeSetParams(CUgraphExec e, CUgraphNode n, const CUDA_MEMCPY3D *c, CUcontext ctx)
{
    (void)ctx;
    LOCKED(set_memcpy(exec_node(E(e), N(n)), c));
}

static CUresult add_event(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, CUevent ev, CUgraphNodeType t)
{
    if (!ev)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc == CUDA_SUCCESS) {
        x->type = t;
        x->ev = ev;
    }
    return rc;
}
SIM_API CUresult cuGraphAddEventRecordNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, CUevent ev)
{
    LOCKED(add_event(ph, g, d, n, ev, CU_GRAPH_NODE_TYPE_EVENT_RECORD));
}
SIM_API CUresult cuGraphAddEventWaitNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, CUevent ev)
{
    LOCKED(add_event(ph, g, d, n, ev, CU_GRAPH_NODE_TYPE_WAIT_EVENT));
}
static CUresult event_get(struct sim_gnode *x, CUgraphNodeType t, CUevent *out)
{
    if (!x || !out || x->type != t)
        return CUDA_ERROR_INVALID_VALUE;
    *out = x->ev;
    return CUDA_SUCCESS;
}
static CUresult event_set(struct sim_gnode *x, CUgraphNodeType t, CUevent ev)
{
    if (!x || !ev || x->type != t)
        return CUDA_ERROR_INVALID_VALUE;
    x->ev = ev;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphEventRecordNodeGetEvent(CUgraphNode n, CUevent *o) { LOCKED(event_get(N(n), CU_GRAPH_NODE_TYPE_EVENT_RECORD, o)); }
SIM_API CUresult cuGraphEventRecordNodeSetEvent(CUgraphNode n, CUevent e) { LOCKED(event_set(N(n), CU_GRAPH_NODE_TYPE_EVENT_RECORD, e)); }
SIM_API CUresult cuGraphEventWaitNodeGetEvent(CUgraphNode n, CUevent *o) { LOCKED(event_get(N(n), CU_GRAPH_NODE_TYPE_WAIT_EVENT, o)); }
SIM_API CUresult cuGraphEventWaitNodeSetEvent(CUgraphNode n, CUevent e) { LOCKED(event_set(N(n), CU_GRAPH_NODE_TYPE_WAIT_EVENT, e)); }
SIM_API CUresult cuGraphExecEventRecordNodeSetEvent(CUgraphExec x, CUgraphNode n, CUevent e)
{
    LOCKED(event_set(exec_node(E(x), N(n)), CU_GRAPH_NODE_TYPE_EVENT_RECORD, e));
}
SIM_API CUresult cuGraphExecEventWaitNodeSetEvent(CUgraphExec x, CUgraphNode n, CUevent e)
{
    LOCKED(event_set(exec_node(E(x), N(n)), CU_GRAPH_NODE_TYPE_WAIT_EVENT, e));
}

static CUresult add_child(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, CUgraph child)
{
    struct sim_graph *c = G(child);
    if (!c || c == G(g))
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *copy = graph_clone(c, 0);
    if (!copy)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc != CUDA_SUCCESS) {
        graph_free(copy);
        return rc;
    }
    x->type = CU_GRAPH_NODE_TYPE_GRAPH;
    x->child = copy;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphAddChildGraphNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, CUgraph child)
{
    LOCKED(add_child(ph, g, d, n, child));
}
static CUresult exec_child_set(struct sim_gnode *x, CUgraph child)
{
    struct sim_graph *c = G(child);
    if (!x || !c || x->type != CU_GRAPH_NODE_TYPE_GRAPH || c->n != x->child->n)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *copy = graph_clone(c, 0);
    if (!copy)
        return CUDA_ERROR_OUT_OF_MEMORY;
    graph_free(x->child);
    x->child = copy;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphExecChildGraphNodeSetParams(CUgraphExec e, CUgraphNode n, CUgraph child)
{
    LOCKED(exec_child_set(exec_node(E(e), N(n)), child));
}

static CUresult add_host(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_HOST_NODE_PARAMS *p)
{
    if (!p || !p->fn)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_gnode *x;
    CUresult rc = add(ph, g, d, n, &x);
    if (rc == CUDA_SUCCESS) {
        x->type = CU_GRAPH_NODE_TYPE_HOST;
        x->host = *p;
    }
    return rc;
}
SIM_API CUresult cuGraphAddHostNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *d, size_t n, const CUDA_HOST_NODE_PARAMS *p)
{
    LOCKED(add_host(ph, g, d, n, p));
}
static CUresult set_host(struct sim_gnode *x, const CUDA_HOST_NODE_PARAMS *p)
{
    if (!x || !p || !p->fn || x->type != CU_GRAPH_NODE_TYPE_HOST)
        return CUDA_ERROR_INVALID_VALUE;
    x->host = *p;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphHostNodeSetParams(CUgraphNode n, const CUDA_HOST_NODE_PARAMS *p) { LOCKED(set_host(N(n), p)); }
SIM_API CUresult cuGraphExecHostNodeSetParams(CUgraphExec e, CUgraphNode n, const CUDA_HOST_NODE_PARAMS *p)
{
    LOCKED(set_host(exec_node(E(e), N(n)), p));
}

static CUresult deps(CUgraph hg, const CUgraphNode *from, const CUgraphNode *to, size_t n, int remove)
{
    struct sim_graph *g = G(hg);
    if (!g || (n && (!from || !to)))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < n; i++) {
        struct sim_gnode *a = N(from[i]), *b = N(to[i]);
        if (!a || !b || a->g != g || b->g != g || a == b)
            return CUDA_ERROR_INVALID_VALUE;
        size_t k = 0;
        while (k < b->n_deps && b->deps[k] != a->index)
            k++;
        if (remove) {
            if (k == b->n_deps)
                return CUDA_ERROR_INVALID_VALUE;
            b->deps[k] = b->deps[--b->n_deps];
        } else if (k == b->n_deps) {
            size_t *nd = realloc(b->deps, (b->n_deps + 1) * sizeof *nd);
            if (!nd)
                return CUDA_ERROR_OUT_OF_MEMORY;
            b->deps = nd;
            b->deps[b->n_deps++] = a->index;
        }
    }
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphAddDependencies_v2(CUgraph g, const CUgraphNode *from, const CUgraphNode *to,
                                           const CUgraphEdgeData *e, size_t n)
{
    (void)e;
    LOCKED(deps(g, from, to, n, 0));
}
SIM_API CUresult cuGraphRemoveDependencies_v2(CUgraph g, const CUgraphNode *from, const CUgraphNode *to,
                                              const CUgraphEdgeData *e, size_t n)
{
    (void)e;
    LOCKED(deps(g, from, to, n, 1));
}

static CUresult get_nodes(CUgraph hg, CUgraphNode *nodes, size_t *num)
{
    struct sim_graph *g = G(hg);
    if (!g || !num)
        return CUDA_ERROR_INVALID_VALUE;
    if (nodes)
        for (size_t i = 0; i < *num && i < g->n; i++)
            nodes[i] = (CUgraphNode)g->nodes[i];
    *num = g->n;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphGetNodes(CUgraph g, CUgraphNode *nodes, size_t *num) { LOCKED(get_nodes(g, nodes, num)); }

static CUresult node_type(struct sim_gnode *x, CUgraphNodeType *t)
{
    if (!x || !t)
        return CUDA_ERROR_INVALID_VALUE;
    *t = x->type;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphNodeGetType(CUgraphNode n, CUgraphNodeType *t) { LOCKED(node_type(N(n), t)); }

static CUresult clone_graph(CUgraph *out, CUgraph hg)
{
    struct sim_graph *g = G(hg);
    if (!out || !g)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *c = graph_clone(g, 0);
    if (!c)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *out = (CUgraph)c;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphClone(CUgraph *out, CUgraph g) { LOCKED(clone_graph(out, g)); }

static CUresult find_in_clone(CUgraphNode *out, struct sim_gnode *orig, struct sim_graph *c)
{
    if (!out || !orig || !c)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < c->n; i++)
        if (c->nodes[i]->origin == orig) {
            *out = (CUgraphNode)c->nodes[i];
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_INVALID_VALUE;
}
SIM_API CUresult cuGraphNodeFindInClone(CUgraphNode *out, CUgraphNode orig, CUgraph clone_)
{
    LOCKED(find_in_clone(out, N(orig), G(clone_)));
}

static CUresult destroy_node(struct sim_gnode *x)
{
    if (!x)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *g = x->g;
    size_t gone = x->index;
    for (size_t i = gone + 1; i < g->n; i++) {
        g->nodes[i - 1] = g->nodes[i];
        g->nodes[i - 1]->index = i - 1;
    }
    g->n--;
    for (size_t i = 0; i < g->n; i++) { /* edges to it go; later indices move down */
        struct sim_gnode *y = g->nodes[i];
        size_t k = 0;
        for (size_t j = 0; j < y->n_deps; j++)
            if (y->deps[j] != gone)
                y->deps[k++] = y->deps[j] > gone ? y->deps[j] - 1 : y->deps[j];
        y->n_deps = k;
    }
    node_free(x);
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphDestroyNode(CUgraphNode n) { LOCKED(destroy_node(N(n))); }

static CUresult instantiate(CUgraphExec *out, CUgraph hg, unsigned long long flags)
{
    struct sim_graph *g = G(hg);
    if (!out || !g)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph *e = graph_clone(g, 1);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->flags = flags;
    *out = (CUgraphExec)e;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphInstantiateWithFlags(CUgraphExec *out, CUgraph g, unsigned long long flags)
{
    LOCKED(instantiate(out, g, flags));
}
SIM_API CUresult cuGraphInstantiateWithParams(CUgraphExec *out, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_graph_mu);
    CUresult rc = instantiate(out, g, p->flags);
    pthread_mutex_unlock(&sim_graph_mu);
    p->result_out = rc == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS : CUDA_GRAPH_INSTANTIATE_ERROR;
    p->hErrNode_out = NULL;
    return rc;
}
static CUresult exec_flags(struct sim_graph *e, cuuint64_t *f)
{
    if (!e || !f)
        return CUDA_ERROR_INVALID_VALUE;
    *f = e->flags;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphExecGetFlags(CUgraphExec e, cuuint64_t *f) { LOCKED(exec_flags(E(e), f)); }

/* Same topology and node types: the executable takes the graph's parameters (node by node, by index). */
static CUresult exec_update(struct sim_graph *e, struct sim_graph *g, CUgraphExecUpdateResultInfo *info)
{
    if (!e || !g)
        return CUDA_ERROR_INVALID_VALUE;
    CUgraphExecUpdateResult res = CU_GRAPH_EXEC_UPDATE_SUCCESS;
    CUgraphNode bad = NULL;
    if (e->n != g->n) {
        res = CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
    } else {
        for (size_t i = 0; i < g->n && res == CU_GRAPH_EXEC_UPDATE_SUCCESS; i++) {
            struct sim_gnode *a = e->nodes[i], *b = g->nodes[i];
            if (a->type != b->type) {
                res = CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED;
                bad = (CUgraphNode)b;
            } else if (a->n_deps != b->n_deps || (a->n_deps && memcmp(a->deps, b->deps, a->n_deps * sizeof *a->deps))) {
                res = CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED;
                bad = (CUgraphNode)b;
            }
        }
    }
    if (res == CU_GRAPH_EXEC_UPDATE_SUCCESS) {
        struct sim_graph *c = graph_clone(g, 1);
        if (!c)
            return CUDA_ERROR_OUT_OF_MEMORY;
        for (size_t i = 0; i < e->n; i++) { /* swap node bodies, keep the executable's node objects */
            struct sim_gnode *old = e->nodes[i], *nw = c->nodes[i];
            struct sim_gnode tmp = *old;
            *old = *nw;
            old->origin = tmp.origin;
            old->g = e;
            old->index = i;
            *nw = tmp;
            nw->g = c;
        }
        graph_free(c);
    }
    if (info) {
        memset(info, 0, sizeof *info);
        info->result = res;
        info->errorNode = bad;
    }
    return res == CU_GRAPH_EXEC_UPDATE_SUCCESS ? CUDA_SUCCESS : CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE;
}
SIM_API CUresult cuGraphExecUpdate_v2(CUgraphExec e, CUgraph g, CUgraphExecUpdateResultInfo *info)
{
    LOCKED(exec_update(E(e), G(g), info));
}

static CUresult enabled(struct sim_gnode *x, unsigned int *get, unsigned int set, int is_set)
{
    if (!x || (!is_set && !get))
        return CUDA_ERROR_INVALID_VALUE;
    if (is_set)
        x->enabled = set != 0;
    else
        *get = (unsigned)x->enabled;
    return CUDA_SUCCESS;
}
SIM_API CUresult cuGraphNodeSetEnabled(CUgraphExec e, CUgraphNode n, unsigned int on)
{
    LOCKED(enabled(exec_node(E(e), N(n)), NULL, on, 1));
}
SIM_API CUresult cuGraphNodeGetEnabled(CUgraphExec e, CUgraphNode n, unsigned int *on)
{
    LOCKED(enabled(exec_node(E(e), N(n)), on, 0, 0));
}

/* ---- running ---- */

static CUresult run_memcpy(const CUDA_MEMCPY3D *c, CUstream s)
{
    size_t h = c->Height ? c->Height : 1, d = c->Depth ? c->Depth : 1;
    size_t sp = c->srcPitch ? c->srcPitch : c->WidthInBytes, dp = c->dstPitch ? c->dstPitch : c->WidthInBytes;
    size_t sh = c->srcHeight ? c->srcHeight : h, dh = c->dstHeight ? c->dstHeight : h;
    for (size_t z = 0; z < d; z++)
        for (size_t y = 0; y < h; y++) {
            size_t so = ((c->srcZ + z) * sh + c->srcY + y) * sp + c->srcXInBytes;
            size_t dof = ((c->dstZ + z) * dh + c->dstY + y) * dp + c->dstXInBytes;
            int sd = c->srcMemoryType != CU_MEMORYTYPE_HOST, dd = c->dstMemoryType != CU_MEMORYTYPE_HOST;
            CUdeviceptr src = sd ? c->srcDevice + so : 0, dst = dd ? c->dstDevice + dof : 0;
            const char *hs = (const char *)c->srcHost + so;
            char *hd = (char *)c->dstHost + dof;
            CUresult rc = sd && dd ? cuMemcpyDtoDAsync(dst, src, c->WidthInBytes, s)
                          : sd     ? cuMemcpyDtoHAsync(hd, src, c->WidthInBytes, s)
                          : dd     ? cuMemcpyHtoDAsync(dst, hs, c->WidthInBytes, s)
                                   : (memcpy(hd, hs, c->WidthInBytes), CUDA_SUCCESS);
            if (rc != CUDA_SUCCESS)
                return rc;
        }
    return CUDA_SUCCESS;
}

static CUresult run_memset(const CUDA_MEMSET_NODE_PARAMS *m, CUstream s)
{
    size_t pitch = m->pitch ? m->pitch : m->width * m->elementSize;
    switch (m->elementSize) {
    case 1: return cuMemsetD2D8Async(m->dst, pitch, (unsigned char)m->value, m->width, m->height, s);
    case 2: return cuMemsetD2D16Async(m->dst, pitch, (unsigned short)m->value, m->width, m->height, s);
    default: return cuMemsetD2D32Async(m->dst, pitch, m->value, m->width, m->height, s);
    }
}

static CUresult run_graph(struct sim_graph *g, CUstream s);

static CUresult run_node(struct sim_gnode *x, CUstream s)
{
    if (!x->enabled)
        return CUDA_SUCCESS;
    switch (x->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL: {
        size_t size = x->ksize;
        void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, x->kbuf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
        return cuLaunchKernel(x->k.func, x->k.gridDimX, x->k.gridDimY, x->k.gridDimZ, x->k.blockDimX, x->k.blockDimY,
                              x->k.blockDimZ, x->k.sharedMemBytes, s, NULL, x->ksize ? extra : NULL);
    }
    case CU_GRAPH_NODE_TYPE_MEMSET: return run_memset(&x->ms, s);
    case CU_GRAPH_NODE_TYPE_MEMCPY: return run_memcpy(&x->mc, s);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD: return cuEventRecord(x->ev, s);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT: return cuStreamWaitEvent(s, x->ev, 0);
    case CU_GRAPH_NODE_TYPE_HOST: x->host.fn(x->host.userData); return CUDA_SUCCESS;
    case CU_GRAPH_NODE_TYPE_GRAPH: return run_graph(x->child, s);
    case CU_GRAPH_NODE_TYPE_CONDITIONAL: return sim_graph_run_conditional(x, s);
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP: return sim_memop_batch(s, x->n_memops, x->memops, 0);
    default: return CUDA_SUCCESS;
    }
}

/* Nodes in an order that respects the dependencies: repeatedly the first not yet run whose dependencies ran. */
static CUresult run_graph(struct sim_graph *g, CUstream s)
{
    unsigned char *done = calloc(g->n ? g->n : 1, 1);
    if (!done)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = CUDA_SUCCESS;
    for (size_t ran = 0; ran < g->n && rc == CUDA_SUCCESS;) {
        size_t before = ran;
        for (size_t i = 0; i < g->n && rc == CUDA_SUCCESS; i++) {
            struct sim_gnode *x = g->nodes[i];
            if (done[i])
                continue;
            size_t k = 0;
            while (k < x->n_deps && x->deps[k] < g->n && done[x->deps[k]])
                k++;
            if (k < x->n_deps)
                continue;
            rc = run_node(x, s);
            done[i] = 1;
            ran++;
        }
        if (ran == before)
            rc = CUDA_ERROR_INVALID_VALUE; /* a cycle */
    }
    free(done);
    return rc;
}

SIM_API CUresult cuGraphLaunch(CUgraphExec he, CUstream s)
{
    sim_lock();
    CUresult cap = sim_stream_check_op(s); /* a graph launch is not captured here */
    sim_unlock();
    if (cap != CUDA_SUCCESS)
        return cap;
    pthread_mutex_lock(&sim_graph_mu);
    struct sim_graph *e = E(he);
    CUresult rc = e ? sim_check_init() : CUDA_ERROR_INVALID_VALUE;
    /* A copy runs, so the lock is not held while nodes call back into the driver or the application. */
    struct sim_graph *copy = rc == CUDA_SUCCESS ? graph_clone(e, 1) : NULL;
    if (copy)
        sim_graph_cond_defaults(copy);
    pthread_mutex_unlock(&sim_graph_mu);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!copy)
        return CUDA_ERROR_OUT_OF_MEMORY;
    rc = run_graph(copy, s);
    graph_free(copy);
    return rc;
}

SIM_API CUresult cuGraphUpload(CUgraphExec e, CUstream s)
{
    (void)s;
    LOCKED(E(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE);
}

/* For sim_graph_cond.c. */
struct sim_graph *sim_graph_clone(const struct sim_graph *g, int is_exec) { return graph_clone(g, is_exec); }
void sim_graph_free(struct sim_graph *g) { graph_free(g); }
CUresult sim_graph_run(struct sim_graph *g, CUstream s) { return run_graph(g, s); }
CUresult sim_graph_add(CUgraphNode *ph, CUgraph hg, const CUgraphNode *deps, size_t n, struct sim_gnode **out)
{
    return add(ph, hg, deps, n, out);
}
