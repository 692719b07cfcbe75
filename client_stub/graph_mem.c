/* graph_mem.c — memory allocation and free nodes in graphs built by hand, emulated in the stub so that their
 * memory is ordinary session memory: counted against the lease's quota and paged with the rest (the driver's
 * graph memory pool is neither).
 *
 * An allocation node allocates its memory when it is added (cuMemAlloc on the node) and is an empty node in the
 * node's graph; its address is fixed from then on, as the driver's is. A free node is an empty node too. The
 * memory lives while a graph or executable holding the allocation node does (clones and instantiations count).
 * A launch whose graph has no free node for an allocation hands the allocation to the application, as the
 * driver does: it stays until the application frees it with cuMemFree, even if its graphs go first. Freeing a
 * graph allocation whose graphs still live only marks it free (the next launch has it again at the same
 * address, as the driver's would). So the memory is held from the node's creation, not only between the
 * allocation and free nodes of a launch: the graph-memory attributes report it that way, and cuDeviceGraphMemTrim
 * has nothing to give back. A free node of an allocation another graph made holds it too (its launch hands the
 * memory back: freed once none of its graphs lives). A child graph with memory nodes is refused, as the driver
 * refuses it. Allocation
 * on a device other than the current context's, peer access descriptors and shareable handle types are refused
 * (CUDA_ERROR_NOT_SUPPORTED, logged once).
 *
 * Stream capture (graph_capture below): cuMemAllocAsync/cuMemAllocFromPoolAsync on a stream under capture come back
 * from the worker with the address and an empty node it added to the capture (server/replay/mempool_capture.c:
 * memory carved out of the stream-ordered pools, so many small allocations share chunks); they are recorded here
 * as allocation nodes of the capture's graph, exactly as hand-built ones. cuMemFreeAsync under capture of a graph
 * allocation adds a free node to the capture's graph here, through cuStreamGetCaptureInfo_v3 and
 * cuStreamUpdateCaptureDependencies_v2 as an application would; of anything else it is CUDA_ERROR_INVALID_VALUE
 * (the driver requires a graph allocation there). A capture that fails (cuStreamEndCapture with an error) never
 * hands its graph out: its allocations go with it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

typedef struct {
    uint64_t node, graph; /* node id, and the graph or executable it is in */
    int is_free;
    CUdeviceptr dptr;
} mem_node;

typedef struct {
    CUdeviceptr dptr;
    size_t bytes;
    int dev;
    int refs;       /* graphs and executables holding its allocation node */
    int user_owned; /* launched without a free node: the application frees it */
    CUDA_MEM_ALLOC_NODE_PARAMS params; /* as given (accessDescs not kept: NULL, count 0) */
} galloc;

typedef struct {
    uint64_t owner;
    CUdeviceptr dptr;
} owner_ref;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static mem_node *nodes;
static size_t n_nodes, cap_nodes;
static galloc *allocs;
static size_t n_allocs, cap_allocs;
static owner_ref *owners;
static size_t n_owners, cap_owners;
static uint64_t high[64]; /* per device: the high watermark of graph memory */

typedef struct {
    CUstream s;
    uint64_t graph;
} capture_ref;
static capture_ref *captures; /* captures under way that made graph allocations */
static size_t n_captures, cap_captures;

static int grow(void **v, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 32;
    void *nv = realloc(*v, c * size);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

static galloc *find_alloc(CUdeviceptr p) {
    for (size_t i = 0; i < n_allocs; i++)
        if (allocs[i].dptr == p) return &allocs[i];
    return NULL;
}

static uint64_t used(int dev) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n_allocs; i++)
        if (allocs[i].dev == dev) sum += allocs[i].bytes;
    return sum;
}

static void note_high(int dev) {
    uint64_t u = used(dev);
    if (dev >= 0 && dev < 64 && u > high[dev]) high[dev] = u;
}

static int owner_add(uint64_t owner, CUdeviceptr d) {
    galloc *a = find_alloc(d);
    if (!a || grow((void **)&owners, &cap_owners, n_owners, sizeof *owners)) return -1;
    owners[n_owners++] = (owner_ref){owner, d};
    a->refs++;
    return 0;
}

static int node_add(uint64_t node, uint64_t graph, int is_free, CUdeviceptr d) {
    if (grow((void **)&nodes, &cap_nodes, n_nodes, sizeof *nodes)) return -1;
    nodes[n_nodes++] = (mem_node){node, graph, is_free, d};
    return 0;
}

static CUresult refuse(const char *what) {
    static int logged;
    return fgc_unsupported(what, &logged);
}

CUresult fgc_cuGraphAddMemAllocNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                    CUDA_MEM_ALLOC_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    if (!ph || !p || !p->bytesize) return CUDA_ERROR_INVALID_VALUE;
    if (p->poolProps.allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
        p->poolProps.location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (p->poolProps.handleTypes != CU_MEM_HANDLE_TYPE_NONE)
        return CUDA_ERROR_INVALID_VALUE; /* the driver's rule: graph allocations are never shareable */
    CUdevice cur = 0;
    CUresult r = cuCtxGetDevice(&cur);
    if (r != CUDA_SUCCESS) return r;
    if (p->poolProps.location.id != cur) return refuse("a graph allocation node on a device other than the current");
    if (p->accessDescCount && !p->accessDescs) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < p->accessDescCount; i++)
        if (p->accessDescs[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || p->accessDescs[i].location.id != cur)
            return refuse("a graph allocation node with peer access descriptors");
    CUdeviceptr d = 0;
    r = cuMemAlloc_v2(&d, p->bytesize);
    if (r != CUDA_SUCCESS) return r;
    r = fgc_cuGraphAddEmptyNode(ph, g, deps, n);
    if (r != CUDA_SUCCESS) {
        cuMemFree_v2(d);
        return r;
    }
    pthread_mutex_lock(&mu);
    int bad = grow((void **)&allocs, &cap_allocs, n_allocs, sizeof *allocs);
    if (!bad) {
        galloc a = {d, p->bytesize, cur, 0, 0, *p};
        a.params.accessDescs = NULL;
        a.params.accessDescCount = 0;
        a.params.dptr = d;
        allocs[n_allocs++] = a;
        bad = node_add(fgc_handle_id(*ph), fgc_handle_id(g), 0, d) || owner_add(fgc_handle_id(g), d);
        note_high(cur);
    }
    pthread_mutex_unlock(&mu);
    if (bad) return CUDA_ERROR_OUT_OF_MEMORY; /* (the node stays, an empty one; the memory goes with the graph) */
    p->dptr = d;
    return CUDA_SUCCESS;
}

static int owns(uint64_t owner, CUdeviceptr d) {
    for (size_t i = 0; i < n_owners; i++)
        if (owners[i].owner == owner && owners[i].dptr == d) return 1;
    return 0;
}

CUresult fgc_cuGraphAddMemFreeNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUdeviceptr dptr) {
    FGC_REQUIRE_INIT();
    if (!ph) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    int known = find_alloc(dptr) != NULL;
    pthread_mutex_unlock(&mu);
    if (!known) return CUDA_ERROR_INVALID_VALUE; /* only graph allocations are freed by free nodes */
    CUresult r = fgc_cuGraphAddEmptyNode(ph, g, deps, n);
    if (r != CUDA_SUCCESS) return r;
    pthread_mutex_lock(&mu);
    uint64_t gid = fgc_handle_id(g);
    int bad = node_add(fgc_handle_id(*ph), gid, 1, dptr);
    if (!bad && !owns(gid, dptr)) bad = owner_add(gid, dptr); /* another graph's allocation: this one holds it too */
    pthread_mutex_unlock(&mu);
    return bad ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

static mem_node *find_node(uint64_t node) {
    for (size_t i = 0; i < n_nodes; i++)
        if (nodes[i].node == node) return &nodes[i];
    return NULL;
}

CUresult fgc_cuGraphMemAllocNodeGetParams(CUgraphNode node, CUDA_MEM_ALLOC_NODE_PARAMS *out) {
    FGC_REQUIRE_INIT();
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    mem_node *m = find_node(fgc_handle_id(node));
    galloc *a = m && !m->is_free ? find_alloc(m->dptr) : NULL;
    if (a) *out = a->params;
    pthread_mutex_unlock(&mu);
    return a ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult fgc_cuGraphMemFreeNodeGetParams(CUgraphNode node, CUdeviceptr *dptr) {
    FGC_REQUIRE_INIT();
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    mem_node *m = find_node(fgc_handle_id(node));
    int ok = m && m->is_free;
    if (ok) *dptr = m->dptr;
    pthread_mutex_unlock(&mu);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

int fgc_graph_mem_node_type(uint64_t node, CUgraphNodeType *type) {
    pthread_mutex_lock(&mu);
    mem_node *m = find_node(node);
    if (m) *type = m->is_free ? CU_GRAPH_NODE_TYPE_MEM_FREE : CU_GRAPH_NODE_TYPE_MEM_ALLOC;
    pthread_mutex_unlock(&mu);
    return m != NULL;
}

/* The node's entries go (their graphs keep what they hold until they go themselves). */
void fgc_graph_mem_node_gone(uint64_t node) {
    pthread_mutex_lock(&mu);
    for (size_t i = n_nodes; i-- > 0;)
        if (nodes[i].node == node) nodes[i] = nodes[--n_nodes];
    pthread_mutex_unlock(&mu);
}

int fgc_graph_mem_holds(uint64_t graph) {
    pthread_mutex_lock(&mu);
    int found = 0;
    for (size_t i = 0; i < n_nodes && !found; i++) found = nodes[i].graph == graph;
    pthread_mutex_unlock(&mu);
    return found;
}

/* ---- lifetimes ---- */

void fgc_graph_mem_cloned(uint64_t from, CUgraph to) {
    pthread_mutex_lock(&mu);
    size_t k = 0;
    for (size_t i = 0; i < n_nodes; i++) k += nodes[i].graph == from;
    mem_node *v = k ? (mem_node *)malloc(k * sizeof *v) : NULL;
    size_t n = 0;
    for (size_t i = 0; v && i < n_nodes; i++)
        if (nodes[i].graph == from) v[n++] = nodes[i];
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < n; i++) { /* the clone's node for each memory node (asked outside the lock) */
        CUgraphNode c = NULL;
        if (cuGraphNodeFindInClone(&c, (CUgraphNode)(uintptr_t)v[i].node, to) != CUDA_SUCCESS) continue;
        pthread_mutex_lock(&mu);
        if (node_add(fgc_handle_id(c), fgc_handle_id(to), v[i].is_free, v[i].dptr) == 0 && !v[i].is_free)
            owner_add(fgc_handle_id(to), v[i].dptr);
        pthread_mutex_unlock(&mu);
    }
    free(v);
}

/* What graph holds, copied to exec (both lists malloc'ed; NULL when empty). */
static void holdings(uint64_t graph, CUdeviceptr **own, size_t *n_own, mem_node **frees, size_t *n_frees) {
    *own = NULL;
    *frees = NULL;
    *n_own = *n_frees = 0;
    size_t k = 0, f = 0;
    for (size_t i = 0; i < n_owners; i++) k += owners[i].owner == graph;
    for (size_t i = 0; i < n_nodes; i++) f += nodes[i].graph == graph && nodes[i].is_free;
    *own = k ? (CUdeviceptr *)malloc(k * sizeof **own) : NULL;
    *frees = f ? (mem_node *)malloc(f * sizeof **frees) : NULL;
    for (size_t i = 0; *own && i < n_owners; i++)
        if (owners[i].owner == graph) (*own)[(*n_own)++] = owners[i].dptr;
    for (size_t i = 0; *frees && i < n_nodes; i++)
        if (nodes[i].graph == graph && nodes[i].is_free) (*frees)[(*n_frees)++] = nodes[i];
}

static void take(uint64_t exec, CUdeviceptr *own, size_t n_own, mem_node *frees, size_t n_frees) {
    for (size_t i = 0; i < n_own; i++) owner_add(exec, own[i]);
    for (size_t i = 0; i < n_frees; i++) node_add(frees[i].node, exec, 1, frees[i].dptr); /* what a launch frees */
    free(own);
    free(frees);
}

void fgc_graph_mem_instantiated(uint64_t graph, uint64_t exec) {
    CUdeviceptr *own;
    mem_node *frees;
    size_t n_own, n_frees;
    pthread_mutex_lock(&mu);
    holdings(graph, &own, &n_own, &frees, &n_frees);
    take(exec, own, n_own, frees, n_frees);
    pthread_mutex_unlock(&mu);
}

/* Drops what owner holds; the allocations nothing holds any more and the application does not own are freed. */
void fgc_graph_mem_destroyed(uint64_t owner) {
    CUdeviceptr gone[64];
    size_t n_gone;
    do {
        n_gone = 0;
        pthread_mutex_lock(&mu);
        for (size_t i = n_nodes; i-- > 0;)
            if (nodes[i].graph == owner) nodes[i] = nodes[--n_nodes];
        for (size_t i = n_owners; i-- > 0 && n_gone < 64;) {
            if (owners[i].owner != owner) continue;
            galloc *a = find_alloc(owners[i].dptr);
            owners[i] = owners[--n_owners];
            if (a && --a->refs == 0 && !a->user_owned) {
                gone[n_gone++] = a->dptr;
                *a = allocs[--n_allocs];
            }
        }
        pthread_mutex_unlock(&mu);
        for (size_t i = 0; i < n_gone; i++) cuMemFree_v2(gone[i]);
    } while (n_gone == 64);
}

void fgc_graph_mem_updated(uint64_t exec, uint64_t graph) {
    /* The executable now runs graph's nodes: graph's holdings replace its own (graph keeps its references, so
     * nothing it holds is freed in between). */
    CUdeviceptr *own;
    mem_node *frees;
    size_t n_own, n_frees;
    pthread_mutex_lock(&mu);
    holdings(graph, &own, &n_own, &frees, &n_frees);
    pthread_mutex_unlock(&mu);
    fgc_graph_mem_destroyed(exec);
    pthread_mutex_lock(&mu);
    take(exec, own, n_own, frees, n_frees);
    pthread_mutex_unlock(&mu);
}

void fgc_graph_mem_launched(uint64_t exec) {
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_owners; i++) {
        if (owners[i].owner != exec) continue;
        int freed = 0;
        for (size_t j = 0; j < n_nodes && !freed; j++)
            freed = nodes[j].graph == exec && nodes[j].is_free && nodes[j].dptr == owners[i].dptr;
        galloc *a = find_alloc(owners[i].dptr);
        if (a) a->user_owned = !freed;
    }
    pthread_mutex_unlock(&mu);
}

/* cuMemFree of a graph allocation: 1 when handled here (its graphs still hold it: only marked free). */
int fgc_graph_mem_user_free(CUdeviceptr p) {
    pthread_mutex_lock(&mu);
    galloc *a = find_alloc(p);
    int held = a && a->refs > 0;
    if (a && held) a->user_owned = 0;
    else if (a) *a = allocs[--n_allocs]; /* nothing holds it: the caller frees it for real */
    pthread_mutex_unlock(&mu);
    return held;
}

/* ---- graph memory attributes: what the emulated allocations hold ---- */

static CUresult check_dev(CUdevice dev) {
    int count = 0;
    CUresult r = cuDeviceGetCount(&count);
    if (r != CUDA_SUCCESS) return r;
    return dev < 0 || dev >= count || dev >= 64 ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

CUresult fgc_cuDeviceGetGraphMemAttribute(CUdevice dev, CUgraphMem_attribute attr, void *value) {
    FGC_REQUIRE_INIT();
    CUresult r = check_dev(dev);
    if (r != CUDA_SUCCESS) return r;
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&mu);
    uint64_t v = 0;
    switch (attr) {
    case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT:
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: v = used(dev); break;
    case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH:
    case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: v = high[dev]; break;
    default: r = CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_unlock(&mu);
    if (r == CUDA_SUCCESS) memcpy(value, &v, sizeof v);
    return r;
}

CUresult fgc_cuDeviceSetGraphMemAttribute(CUdevice dev, CUgraphMem_attribute attr, void *value) {
    FGC_REQUIRE_INIT();
    CUresult r = check_dev(dev);
    if (r != CUDA_SUCCESS) return r;
    uint64_t v = 1;
    if (value) memcpy(&v, value, sizeof v);
    if ((attr != CU_GRAPH_MEM_ATTR_USED_MEM_HIGH && attr != CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH) || v != 0)
        return CUDA_ERROR_INVALID_VALUE; /* only the high watermarks, and only back to zero */
    pthread_mutex_lock(&mu);
    high[dev] = used(dev); /* what is held now is the new mark */
    pthread_mutex_unlock(&mu);
    return CUDA_SUCCESS;
}

CUresult fgc_cuDeviceGraphMemTrim(CUdevice dev) {
    FGC_REQUIRE_INIT();
    return check_dev(dev); /* nothing cached: graph memory goes back with its graphs (above) */
}

/* ---- stream capture ---- */

void fgc_graph_mem_captured_alloc(CUstream s, uint64_t node, uint64_t graph, CUdeviceptr d, size_t bytes, int dev) {
    pthread_mutex_lock(&mu);
    int bad = grow((void **)&allocs, &cap_allocs, n_allocs, sizeof *allocs);
    if (!bad) {
        galloc a;
        memset(&a, 0, sizeof a);
        a.dptr = d;
        a.bytes = bytes;
        a.dev = dev;
        a.params.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        a.params.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        a.params.poolProps.location.id = dev;
        a.params.bytesize = bytes;
        a.params.dptr = d;
        allocs[n_allocs++] = a;
        bad = node_add(node, graph, 0, d) || owner_add(graph, d);
        note_high(dev);
    }
    int known = 0;
    for (size_t i = 0; i < n_captures && !known; i++) known = captures[i].s == s && captures[i].graph == graph;
    if (!bad && !known && !grow((void **)&captures, &cap_captures, n_captures, sizeof *captures))
        captures[n_captures++] = (capture_ref){s, graph};
    pthread_mutex_unlock(&mu);
    if (bad) fgc_log(FGC_LOG_WARN, "graph allocation %#llx: out of memory recording it", (unsigned long long)d);
}

void fgc_graph_mem_capture_ended(CUstream s, int ok) {
    for (;;) {
        uint64_t gone = 0;
        pthread_mutex_lock(&mu);
        for (size_t i = 0; i < n_captures && !gone; i++)
            if (captures[i].s == s) {
                gone = ok ? 0 : captures[i].graph;
                captures[i] = captures[--n_captures];
                if (ok) i--; /* look at the entry moved here */
            }
        pthread_mutex_unlock(&mu);
        if (!gone) return;
        fgc_graph_mem_destroyed(gone); /* the driver destroyed the graph of the failed capture */
    }
}

/* cuMemFreeAsync on a stream under capture: a free node of the capture's graph (graph allocations only). */
CUresult fgc_graph_mem_capture_free(CUdeviceptr d, CUstream s) {
    pthread_mutex_lock(&mu);
    int known = find_alloc(d) != NULL;
    pthread_mutex_unlock(&mu);
    if (!known) return CUDA_ERROR_INVALID_VALUE; /* the driver: "must be passed the address of a graph allocation" */
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUgraph g = NULL;
    const CUgraphNode *deps = NULL;
    size_t n = 0;
    CUresult r = fgc_cuStreamGetCaptureInfo_v3(s, &st, NULL, &g, &deps, NULL, &n);
    if (r != CUDA_SUCCESS) return r;
    if (st != CU_STREAM_CAPTURE_STATUS_ACTIVE) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    CUgraphNode node = NULL;
    r = fgc_cuGraphAddMemFreeNode(&node, g, deps, n, d);
    if (r != CUDA_SUCCESS) return r;
    return fgc_cuStreamUpdateCaptureDependencies_v2(s, &node, NULL, 1, CU_STREAM_SET_CAPTURE_DEPENDENCIES);
}
