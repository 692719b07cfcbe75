/* sim_userobj.c - user objects on the simulated device: cuUserObjectCreate, cuUserObjectRetain,
 * cuUserObjectRelease, cuGraphRetainUserObject, cuGraphReleaseUserObject, and the references graphs own.
 *
 * An object counts its references; when the last goes its destructor is called with its pointer, at once, on the
 * thread that dropped it (the driver calls it later on an internal thread; nothing may wait for it either way:
 * CU_USER_OBJECT_NO_DESTRUCTOR_SYNC is required). A graph keeps a list of the objects it holds references to, with
 * counts: retaining adds references (or, with CU_GRAPH_USER_OBJECT_MOVE, takes over the caller's), releasing gives
 * back references the graph holds (more than it holds is CUDA_ERROR_INVALID_VALUE), and a graph or executable
 * that goes releases all of its own. A clone, an executable instantiated from a graph and a child graph's copy
 * hold references of their own to the same objects (sim_uobj_graph_copy). Handles are checked against the live
 * objects; counts must be 1..INT_MAX. Objects have their own lock, taken inside the graph lock, never with the
 * device's global lock; destructors run with neither held by this file. */
#include "sim_graph.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

struct sim_uobj {
    void *ptr;
    CUhostFn destroy;
    unsigned long long refs;
    struct sim_uobj *next;
};

struct sim_uref {
    struct sim_uobj *o;
    unsigned long long n;
};

static pthread_mutex_t uo_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sim_uobj *g_objs;

static struct sim_uobj *find(CUuserObject h) /* uo_mu held */
{
    struct sim_uobj *o = g_objs;
    while (o && o != (struct sim_uobj *)h)
        o = o->next;
    return o;
}

/* Drops n references (uo_mu held); returns the object when they were its last (unlinked: the caller destroys it). */
static struct sim_uobj *drop(struct sim_uobj *o, unsigned long long n)
{
    o->refs -= n;
    if (o->refs)
        return NULL;
    struct sim_uobj **p = &g_objs;
    while (*p != o)
        p = &(*p)->next;
    *p = o->next;
    return o;
}

static void destroy(struct sim_uobj *o)
{
    if (!o)
        return;
    o->destroy(o->ptr);
    free(o);
}

SIM_API CUresult cuUserObjectCreate(CUuserObject *object_out, void *ptr, CUhostFn destroy_fn,
                                    unsigned int initialRefcount, unsigned int flags)
{
    CUresult rc = CUDA_SUCCESS;
    sim_lock();
    rc = sim_check_init();
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!object_out || !destroy_fn || !initialRefcount || initialRefcount > INT_MAX ||
        flags != CU_USER_OBJECT_NO_DESTRUCTOR_SYNC)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_uobj *o = calloc(1, sizeof *o);
    if (!o)
        return CUDA_ERROR_OUT_OF_MEMORY;
    o->ptr = ptr;
    o->destroy = destroy_fn;
    o->refs = initialRefcount;
    pthread_mutex_lock(&uo_mu);
    o->next = g_objs;
    g_objs = o;
    pthread_mutex_unlock(&uo_mu);
    *object_out = (CUuserObject)o;
    return CUDA_SUCCESS;
}

static CUresult change(CUuserObject object, unsigned int count, int add)
{
    if (!count || count > INT_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_uobj *gone = NULL;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&uo_mu);
    struct sim_uobj *o = find(object);
    if (!o || (!add && count > o->refs) || (add && o->refs > ULLONG_MAX - count))
        rc = CUDA_ERROR_INVALID_VALUE;
    else if (add)
        o->refs += count;
    else
        gone = drop(o, count);
    pthread_mutex_unlock(&uo_mu);
    destroy(gone);
    return rc;
}

SIM_API CUresult cuUserObjectRetain(CUuserObject object, unsigned int count) { return change(object, count, 1); }
SIM_API CUresult cuUserObjectRelease(CUuserObject object, unsigned int count) { return change(object, count, 0); }

static CUresult graph_retain(struct sim_graph *g, CUuserObject object, unsigned int count, unsigned int flags)
{
    if (!g || !count || count > INT_MAX || (flags & ~(unsigned)CU_GRAPH_USER_OBJECT_MOVE))
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&uo_mu);
    struct sim_uobj *o = find(object);
    size_t i = 0;
    while (o && i < g->n_urefs && g->urefs[i].o != o)
        i++;
    if (!o || (flags && count > o->refs))
        rc = CUDA_ERROR_INVALID_VALUE; /* a move takes references the caller holds */
    if (rc == CUDA_SUCCESS && i == g->n_urefs) {
        struct sim_uref *nr = realloc(g->urefs, (g->n_urefs + 1) * sizeof *nr);
        if (!nr)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        else {
            g->urefs = nr;
            g->urefs[g->n_urefs++] = (struct sim_uref){ o, 0 };
        }
    }
    if (rc == CUDA_SUCCESS) {
        g->urefs[i].n += count;
        if (!flags)
            o->refs += count;
    }
    pthread_mutex_unlock(&uo_mu);
    return rc;
}

static CUresult graph_release(struct sim_graph *g, CUuserObject object, unsigned int count)
{
    if (!g || !count || count > INT_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_uobj *gone = NULL;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&uo_mu);
    struct sim_uobj *o = find(object);
    size_t i = 0;
    while (o && i < g->n_urefs && g->urefs[i].o != o)
        i++;
    if (!o || i == g->n_urefs || count > g->urefs[i].n) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        g->urefs[i].n -= count;
        if (!g->urefs[i].n)
            g->urefs[i] = g->urefs[--g->n_urefs];
        gone = drop(o, count);
    }
    pthread_mutex_unlock(&uo_mu);
    destroy(gone);
    return rc;
}

SIM_API CUresult cuGraphRetainUserObject(CUgraph graph, CUuserObject object, unsigned int count, unsigned int flags)
{
    LOCKED(graph_retain(G(graph), object, count, flags));
}

SIM_API CUresult cuGraphReleaseUserObject(CUgraph graph, CUuserObject object, unsigned int count)
{
    LOCKED(graph_release(G(graph), object, count));
}

int sim_uobj_graph_copy(struct sim_graph *dst, const struct sim_graph *src)
{
    if (!src->n_urefs)
        return 0;
    dst->urefs = malloc(src->n_urefs * sizeof *dst->urefs);
    if (!dst->urefs)
        return -1;
    pthread_mutex_lock(&uo_mu);
    for (size_t i = 0; i < src->n_urefs; i++) {
        dst->urefs[i] = src->urefs[i];
        src->urefs[i].o->refs += src->urefs[i].n;
    }
    dst->n_urefs = src->n_urefs;
    pthread_mutex_unlock(&uo_mu);
    return 0;
}

void sim_uobj_graph_release_all(struct sim_graph *g)
{
    for (size_t i = 0; i < g->n_urefs; i++) {
        pthread_mutex_lock(&uo_mu);
        struct sim_uobj *gone = drop(g->urefs[i].o, g->urefs[i].n);
        pthread_mutex_unlock(&uo_mu);
        destroy(gone);
    }
    free(g->urefs);
    g->urefs = NULL;
    g->n_urefs = 0;
}
