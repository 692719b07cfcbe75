/* sim_graph_cond.c - conditional graph nodes on the simulated device: handles (cuGraphConditionalHandleCreate),
 * conditional nodes made with cuGraphAddNode (the only node type the simulated cuGraphAddNode takes: the stub
 * sends every other kind through its own call), and running them: IF runs its first body when the condition is
 * non-zero (its second, if it has one, when zero), WHILE runs its body as long as the condition is non-zero (a
 * loop past SIM_COND_MAX_ITER rounds is an error, not a hang), SWITCH runs body n when the condition is n. A
 * handle made with CU_GRAPH_COND_ASSIGN_DEFAULT takes its default value when a launch begins. Kernels set a
 * condition through sim_graph_cond_set (the test kernel fg_set_cond and fg_count_down, sim_kernels.c). Body
 * graphs belong to their node, as the driver's do, and are copied with it into clones and executables. */
#include "sim_graph.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SIM_COND_MAX 4096
#define SIM_COND_MAX_ITER (1u << 20)
#define SIM_COND_TAG 0x5c0d000000000000ull

struct cond {
    int used;
    unsigned value, deflt, flags;
};

static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static struct cond conds[SIM_COND_MAX];
static size_t n_conds;

static struct cond *C(CUgraphConditionalHandle h)
{
    uint64_t i = h ^ SIM_COND_TAG;
    return (h & SIM_COND_TAG) == SIM_COND_TAG && i >= 1 && i <= n_conds && conds[i - 1].used ? &conds[i - 1] : NULL;
}

SIM_API CUresult cuGraphConditionalHandleCreate(CUgraphConditionalHandle *out, CUgraph g, CUcontext ctx,
                                                unsigned int deflt, unsigned int flags)
{
    (void)ctx;
    if (!out || (flags & ~(unsigned)CU_GRAPH_COND_ASSIGN_DEFAULT))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sim_graph_mu);
    int ok = G(g) != NULL;
    pthread_mutex_unlock(&sim_graph_mu);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&cmu);
    CUresult rc = n_conds < SIM_COND_MAX ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        conds[n_conds++] = (struct cond){1, deflt, deflt, flags};
        *out = SIM_COND_TAG | n_conds;
    }
    pthread_mutex_unlock(&cmu);
    return rc;
}

/* A kernel's cudaGraphSetConditional. */
CUresult sim_graph_cond_set(CUgraphConditionalHandle h, unsigned int value)
{
    pthread_mutex_lock(&cmu);
    struct cond *c = C(h);
    if (c)
        c->value = value;
    pthread_mutex_unlock(&cmu);
    return c ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult value_of(CUgraphConditionalHandle h, unsigned *v)
{
    pthread_mutex_lock(&cmu);
    struct cond *c = C(h);
    if (c)
        *v = c->value;
    pthread_mutex_unlock(&cmu);
    return c ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

void sim_graph_cond_defaults(const struct sim_graph *g)
{
    for (size_t i = 0; i < g->n; i++) {
        const struct sim_gnode *x = g->nodes[i];
        if (x->type == CU_GRAPH_NODE_TYPE_GRAPH && x->child)
            sim_graph_cond_defaults(x->child);
        if (x->type != CU_GRAPH_NODE_TYPE_CONDITIONAL)
            continue;
        pthread_mutex_lock(&cmu);
        struct cond *c = C(x->cond);
        if (c && (c->flags & CU_GRAPH_COND_ASSIGN_DEFAULT))
            c->value = c->deflt;
        pthread_mutex_unlock(&cmu);
        for (unsigned b = 0; b < x->nbodies; b++)
            sim_graph_cond_defaults(x->bodies[b]);
    }
}

CUresult sim_graph_run_conditional(struct sim_gnode *x, CUstream s)
{
    unsigned v = 0;
    CUresult rc = value_of(x->cond, &v);
    if (rc != CUDA_SUCCESS)
        return rc;
    switch (x->ctype) {
    case CU_GRAPH_COND_TYPE_IF:
        if (v)
            return sim_graph_run(x->bodies[0], s);
        return x->nbodies == 2 ? sim_graph_run(x->bodies[1], s) : CUDA_SUCCESS;
    case CU_GRAPH_COND_TYPE_WHILE:
        for (unsigned it = 0; v; it++) {
            if (it == SIM_COND_MAX_ITER) {
                sim_log_once("a WHILE conditional node", "ran 2^20 rounds without its condition turning zero");
                return CUDA_ERROR_LAUNCH_TIMEOUT;
            }
            if ((rc = sim_graph_run(x->bodies[0], s)) != CUDA_SUCCESS || (rc = value_of(x->cond, &v)) != CUDA_SUCCESS)
                return rc;
        }
        return CUDA_SUCCESS;
    case CU_GRAPH_COND_TYPE_SWITCH: return v < x->nbodies ? sim_graph_run(x->bodies[v], s) : CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

static CUresult add_conditional(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                CUgraphNodeParams *p)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    if (p->type != CU_GRAPH_NODE_TYPE_CONDITIONAL) {
        sim_log_once("cuGraphAddNode", "only conditional nodes are simulated through it");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    CUDA_CONDITIONAL_NODE_PARAMS *c = &p->conditional;
    unsigned size = c->size;
    int ok_size = c->type == CU_GRAPH_COND_TYPE_IF       ? size == 1 || size == 2
                  : c->type == CU_GRAPH_COND_TYPE_WHILE  ? size == 1
                  : c->type == CU_GRAPH_COND_TYPE_SWITCH ? size >= 1 && size <= 1024
                                                         : 0;
    pthread_mutex_lock(&cmu);
    int known = C(c->handle) != NULL;
    pthread_mutex_unlock(&cmu);
    if (!ok_size || !known)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_graph **bodies = calloc(size, sizeof *bodies);
    int bad = !bodies;
    for (unsigned i = 0; !bad && i < size; i++) {
        CUgraph b = NULL;
        bad = cuGraphCreate(&b, 0) != CUDA_SUCCESS;
        if (!bad)
            bodies[i] = (struct sim_graph *)b;
    }
    struct sim_gnode *x = NULL;
    CUresult rc = bad ? CUDA_ERROR_OUT_OF_MEMORY : sim_graph_add(ph, g, deps, n, &x);
    if (rc != CUDA_SUCCESS) {
        for (unsigned i = 0; bodies && i < size; i++)
            if (bodies[i])
                sim_graph_free(bodies[i]);
        free(bodies);
        return rc;
    }
    x->type = CU_GRAPH_NODE_TYPE_CONDITIONAL;
    x->cond = c->handle;
    x->ctype = c->type;
    x->nbodies = size;
    x->bodies = bodies;
    c->phGraph_out = (CUgraph *)x->bodies;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuGraphAddNode_v2(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, const CUgraphEdgeData *edges,
                                   size_t n, CUgraphNodeParams *p)
{
    static const CUgraphEdgeData zero;
    for (size_t i = 0; edges && i < n; i++)
        if (memcmp(&edges[i], &zero, sizeof zero)) {
            sim_log_once("cuGraphAddNode", "edge data other than the default is not simulated");
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    LOCKED(add_conditional(ph, g, deps, n, p));
}
