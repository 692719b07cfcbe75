/* sim_graph.h - the simulated device's graph structures, shared by sim_graph.c (building, instantiating,
 * running) and sim_graph_query.c (what the getters read back: edges, roots, dependencies, node parameters). */
#ifndef FARGPU_SIM_GRAPH_H
#define FARGPU_SIM_GRAPH_H

#include "sim.h"

#include <pthread.h>
#include <stddef.h>

#define MAX_NODES 65536

struct sim_graph;

struct sim_gnode {
    struct sim_graph *g;
    size_t index;
    CUgraphNodeType type;
    size_t *deps;
    size_t n_deps;
    int enabled;
    struct sim_gnode *origin; /* in a clone or an executable: the node it copies */
    CUDA_KERNEL_NODE_PARAMS_v2 k;
    unsigned char *kbuf;
    size_t ksize;
    int kextra; /* its parameters came as an `extra` buffer (a cooperative launch attribute is refused then) */
    CUDA_MEMSET_NODE_PARAMS ms;
    CUDA_MEMCPY3D mc;
    CUevent ev;
    CUDA_HOST_NODE_PARAMS host;
    struct sim_graph *child;
    CUgraphConditionalHandle cond;   /* a conditional node: its handle, kind and body graphs (sim_graph_cond.c) */
    CUgraphConditionalNodeType ctype;
    unsigned int nbodies;
    struct sim_graph **bodies;       /* what cuGraphAddNode hands out as phGraph_out */
    CUkernelNodeAttrValue attrs[32]; /* kernel node attributes by id (sim_graph_query.c); unset: zero */
    void **kparams; /* what cuGraphKernelNodeGetParams_v2 hands out: pointers into kbuf */
    CUstreamBatchMemOpParams *memops; /* a batch memory-operation node's operations (sim_graph_memop.c) */
    unsigned int n_memops;
    CUcontext memop_ctx;
};

struct sim_uref;

struct sim_graph {
    uint32_t magic;
    int is_exec;
    unsigned long long flags;
    struct sim_gnode **nodes;
    size_t n, cap;
    struct sim_uref *urefs; /* user objects it holds references to (sim_userobj.c) */
    size_t n_urefs;
};

#define GMAGIC 0x47524148u
extern pthread_mutex_t sim_graph_mu; /* guards graph structures (sim_graph.c) */

static inline struct sim_graph *G(CUgraph g) {
    struct sim_graph *s = (struct sim_graph *)g;
    return s && s->magic == GMAGIC && !s->is_exec ? s : NULL;
}
static inline struct sim_graph *E(CUgraphExec e) {
    struct sim_graph *s = (struct sim_graph *)e;
    return s && s->magic == GMAGIC && s->is_exec ? s : NULL;
}
static inline struct sim_gnode *N(CUgraphNode n) {
    struct sim_gnode *x = (struct sim_gnode *)n;
    return x && x->g && x->g->magic == GMAGIC && x->index < x->g->n && x->g->nodes[x->index] == x ? x : NULL;
}

#define LOCKED(expr)                         \
    do {                                     \
        pthread_mutex_lock(&sim_graph_mu);   \
        CUresult rc_ = sim_check_init();     \
        if (rc_ == CUDA_SUCCESS)             \
            rc_ = (expr);                    \
        pthread_mutex_unlock(&sim_graph_mu); \
        return rc_;                          \
    } while (0)

/* sim_graph.c: a deep copy of g (an executable when is_exec), freeing one, and running one on stream s. */
struct sim_graph *sim_graph_clone(const struct sim_graph *g, int is_exec);
void sim_graph_free(struct sim_graph *g);
CUresult sim_graph_run(struct sim_graph *g, CUstream s);
/* sim_graph.c: adds an empty node of no type yet to graph hg (the caller sets it up). */
CUresult sim_graph_add(CUgraphNode *ph, CUgraph hg, const CUgraphNode *deps, size_t n, struct sim_gnode **out);
/* sim_userobj.c: a copy of src's user object references for dst (-1: out of memory); a graph's going. */
int sim_uobj_graph_copy(struct sim_graph *dst, const struct sim_graph *src);
void sim_uobj_graph_release_all(struct sim_graph *g);
/* sim_graph_cond.c: run a conditional node; set the launch's default values of the handles in g. */
CUresult sim_graph_run_conditional(struct sim_gnode *x, CUstream s);
void sim_graph_cond_defaults(const struct sim_graph *g);

#endif
