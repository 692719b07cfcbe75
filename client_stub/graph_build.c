/* graph_build.c — graphs built by hand. Every call goes to the node (server/replay/graph_build.c) with its
 * handles as virtual ids; node handles come back as ids too.
 *
 * Host memory in a memcpy node is the one thing the node cannot reach. Such a node gets a device shadow of the
 * host range (the whole span the copy touches), and the node copies to or from the shadow instead. Each launch
 * of an executable graph then fills every source shadow from the host just before the launch (the bytes as they
 * are when cuGraphLaunch is called) and, after it, copies every destination shadow back into the host memory on
 * the same stream (delivered like any async device→host copy, before the next synchronising call returns). A
 * destination whose copy leaves gaps (a pitch wider than the rows) is filled first too, so the gaps keep the
 * host's bytes. Mapped host memory with a device shadow already (managed.c) is used as device memory directly.
 * Shadows are shared by graphs cloned from the one that made them, by parents of a child graph and by the
 * executables instantiated or updated from them; they are freed when the last of these is destroyed. Arrays in
 * memcpy nodes are refused (CUDA_ERROR_NOT_SUPPORTED).
 *
 * Copies between host memory and the device made on a stream under capture get the same shadows
 * (capture_copies.c, through the small API at the end of this file): the captured node copies device to device,
 * to or from a shadow bound to the capture's graph, so launches move the application's bytes as above. A host
 * node of the same graph that reads what a captured device-to-host copy wrote sees the bytes of before the
 * launch (natively it would see the new ones): the shadow is copied back only after the whole launch. Shadows are
 * allocated and freed with the thread's capture mode relaxed while a capture is under way (capture_copies.c). */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"

#define MAX_DEPS 4096

typedef struct {
    uint64_t host, dev;
    size_t size;
    int out, pre; /* copied back after each launch; filled before it */
    int refs;
} shadow;

typedef struct {
    uint64_t owner; /* graph or executable id (ids are unique across kinds) */
    uint64_t node;  /* the memcpy node in that graph, 0 when unknown (a copy) */
    shadow *sh;
} binding;

static pthread_mutex_t bmu = PTHREAD_MUTEX_INITIALIZER;
static binding *binds;
static size_t n_binds, cap_binds;

static int bind_add(uint64_t owner, uint64_t node, shadow *sh) {
    if (n_binds == cap_binds) {
        size_t cap = cap_binds ? cap_binds * 2 : 32;
        binding *nb = (binding *)realloc(binds, cap * sizeof *nb);
        if (!nb) return -1;
        binds = nb;
        cap_binds = cap;
    }
    sh->refs++;
    binds[n_binds++] = (binding){owner, node, sh};
    return 0;
}

/* Drop the bindings of owner (of one node when node != 0). Returns the shadows whose last reference went, for
 * the caller to free outside the lock. */
static size_t bind_drop(uint64_t owner, uint64_t node, shadow **freed, size_t max) {
    size_t k = 0;
    for (size_t i = n_binds; i-- > 0;) {
        if (binds[i].owner != owner || (node && binds[i].node != node)) continue;
        shadow *sh = binds[i].sh;
        binds[i] = binds[--n_binds];
        if (--sh->refs == 0 && k < max) freed[k++] = sh;
    }
    return k;
}

static void free_shadows(shadow **v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        fgc_shadow_mem_free(v[i]->dev);
        free(v[i]);
    }
}

static void drop_owner(uint64_t owner, uint64_t node) {
    shadow *freed[256];
    size_t n;
    do {
        pthread_mutex_lock(&bmu);
        n = bind_drop(owner, node, freed, 256);
        pthread_mutex_unlock(&bmu);
        free_shadows(freed, n);
    } while (n == 256);
}

static void copy_owner(uint64_t from, uint64_t to) {
    pthread_mutex_lock(&bmu);
    size_t n = n_binds;
    for (size_t i = 0; i < n; i++)
        if (binds[i].owner == from) bind_add(to, 0, binds[i].sh);
    pthread_mutex_unlock(&bmu);
}

int fgc_graph_shadow_host(uint64_t dev, void **host) {
    int found = 0;
    pthread_mutex_lock(&bmu);
    for (size_t i = 0; dev && i < n_binds && !found; i++)
        if (binds[i].sh->dev == dev) {
            *host = (void *)(uintptr_t)binds[i].sh->host;
            found = 1;
        }
    pthread_mutex_unlock(&bmu);
    return found;
}

/* ---- one side of a memcpy node ---- */

static CUresult side(CUmemorytype *type, const void **host, CUdeviceptr *dev, CUarray *arr, size_t x, size_t y,
                     size_t z, size_t pitch, size_t height, const CUDA_MEMCPY3D *c, int out, shadow **made) {
    *made = NULL;
    if (*type == CU_MEMORYTYPE_ARRAY) {
        static int logged;
        return fgc_unsupported("a graph memcpy node with a CUDA array", &logged);
    }
    uint64_t p = *type == CU_MEMORYTYPE_HOST ? (uint64_t)(uintptr_t)*host : (uint64_t)*dev;
    if (*type == CU_MEMORYTYPE_DEVICE || (*type == CU_MEMORYTYPE_UNIFIED && fgc_device_range_find(p, NULL, NULL))) {
        *type = CU_MEMORYTYPE_DEVICE;
        *dev = p;
        *host = NULL;
        return CUDA_SUCCESS;
    }
    if (*type != CU_MEMORYTYPE_HOST && *type != CU_MEMORYTYPE_UNIFIED) return CUDA_ERROR_INVALID_VALUE;
    uint64_t mapped;
    if (fgc_mirror_device_of((const void *)(uintptr_t)p, &mapped)) { /* mapped host memory with a shadow */
        *type = CU_MEMORYTYPE_DEVICE;
        *dev = mapped;
        *host = NULL;
        return CUDA_SUCCESS;
    }
    size_t w = c->WidthInBytes, h = c->Height ? c->Height : 1, d = c->Depth ? c->Depth : 1;
    if (!pitch) pitch = w;
    if (!height) height = h;
    size_t end = ((z + d - 1) * height + (y + h - 1)) * pitch + x + w;
    int whole = !x && !y && !z && (h * d == 1 || (pitch == w && (d == 1 || height == h)));
    shadow *sh = (shadow *)calloc(1, sizeof *sh);
    if (!sh) return CUDA_ERROR_OUT_OF_MEMORY;
    CUdeviceptr s = 0;
    CUresult r = fgc_shadow_mem_alloc(end ? end : 1, &s);
    if (r != CUDA_SUCCESS) {
        free(sh);
        return r;
    }
    *sh = (shadow){p, s, end, out, !out || !whole, 0};
    *type = CU_MEMORYTYPE_DEVICE;
    *dev = s;
    *host = NULL;
    (void)arr;
    *made = sh;
    return CUDA_SUCCESS;
}

/* The node's copy with host memory replaced by shadows (made[0]: source, made[1]: destination). */
static CUresult translate(const CUDA_MEMCPY3D *in, CUDA_MEMCPY3D *c, shadow *made[2]) {
    if (!in) return CUDA_ERROR_INVALID_VALUE;
    *c = *in;
    CUresult r = side(&c->srcMemoryType, &c->srcHost, &c->srcDevice, &c->srcArray, c->srcXInBytes, c->srcY, c->srcZ,
                      c->srcPitch, c->srcHeight, c, 0, &made[0]);
    if (r != CUDA_SUCCESS) return r;
    r = side(&c->dstMemoryType, (const void **)&c->dstHost, &c->dstDevice, &c->dstArray, c->dstXInBytes, c->dstY,
             c->dstZ, c->dstPitch, c->dstHeight, c, 1, &made[1]);
    if (r != CUDA_SUCCESS && made[0]) {
        free_shadows(&made[0], 1);
        made[0] = NULL;
    }
    return r;
}

static void keep(uint64_t owner, uint64_t node, shadow *made[2]) {
    pthread_mutex_lock(&bmu);
    for (int i = 0; i < 2; i++)
        if (made[i] && bind_add(owner, node, made[i]) != 0) made[i]->refs = -1; /* no room: never freed */
    pthread_mutex_unlock(&bmu);
}

static void discard(shadow *made[2]) {
    for (int i = 0; i < 2; i++)
        if (made[i]) free_shadows(&made[i], 1);
}

/* ---- adding nodes ---- */

static fg_writer *begin_add(uint16_t op, CUgraph g, const CUgraphNode *deps, size_t n) {
    fg_writer *w = fgc_begin(op);
    if (!w) return NULL;
    fgc_put_handle(w, g);
    fg_put_u64(w, n);
    for (size_t i = 0; i < n; i++) fgc_put_handle(w, deps[i]);
    return w;
}

static CUresult finish_add(CUgraphNode *ph) {
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *ph = (CUgraphNode)(uintptr_t)id;
    return r;
}

#define CHECK_ADD(ph, deps, n)                                                           \
    do {                                                                                 \
        FGC_REQUIRE_INIT();                                                              \
        if (!(ph) || ((n) && !(deps)) || (n) > MAX_DEPS) return CUDA_ERROR_INVALID_VALUE; \
    } while (0)

CUresult fgc_cuGraphAddEmptyNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n) {
    CHECK_ADD(ph, deps, n);
    if (!begin_add(FG_OP_cuGraphAddEmptyNode, g, deps, n)) return fgc_last_error();
    return finish_add(ph);
}

/* Function id, dims[7], packed parameters: built aside first, so a bad parameter leaves the batch untouched. */
static CUresult kernel_payload(fg_writer *tmp, const CUDA_KERNEL_NODE_PARAMS *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUfunction f = p->func ? p->func : (CUfunction)p->kern;
    if (!f) return CUDA_ERROR_INVALID_VALUE;
    tmp->len = 0;
    tmp->failed = 0;
    tmp->limit = FG_DEFAULT_MAX_FRAME;
    fgc_put_handle(tmp, f);
    uint32_t d[7] = {p->gridDimX, p->gridDimY, p->gridDimZ, p->blockDimX, p->blockDimY, p->blockDimZ,
                     p->sharedMemBytes};
    fg_put(tmp, d, sizeof d);
    CUresult r = fgc_put_kernel_params(tmp, f, p->kernelParams, p->extra);
    return r != CUDA_SUCCESS ? r : tmp->failed ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

static __thread fg_writer t_tmp;

CUresult fgc_cuGraphAddKernelNode_v2(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                     const CUDA_KERNEL_NODE_PARAMS *p) {
    CHECK_ADD(ph, deps, n);
    CUresult r = kernel_payload(&t_tmp, p);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = begin_add(FG_OP_cuGraphAddKernelNode_v2, g, deps, n);
    if (!w) return fgc_last_error();
    fg_put(w, t_tmp.buf, t_tmp.len);
    return finish_add(ph);
}

CUresult fgc_cuGraphKernelNodeSetParams_v2(CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    CUresult r = kernel_payload(&t_tmp, p);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphKernelNodeSetParams_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, node);
    fg_put(w, t_tmp.buf, t_tmp.len);
    return fgc_sync();
}

CUresult fgc_cuGraphExecKernelNodeSetParams_v2(CUgraphExec e, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    CUresult r = kernel_payload(&t_tmp, p);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecKernelNodeSetParams_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, e);
    fgc_put_handle(w, node);
    fg_put(w, t_tmp.buf, t_tmp.len);
    return fgc_sync();
}

CUresult fgc_cuGraphAddMemsetNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                  const CUDA_MEMSET_NODE_PARAMS *p, CUcontext ctx) {
    CHECK_ADD(ph, deps, n);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = begin_add(FG_OP_cuGraphAddMemsetNode, g, deps, n);
    if (!w) return fgc_last_error();
    fg_put(w, p, sizeof *p);
    fgc_put_handle(w, ctx);
    return finish_add(ph);
}

CUresult fgc_cuGraphAddMemcpyNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                  const CUDA_MEMCPY3D *copy, CUcontext ctx) {
    CHECK_ADD(ph, deps, n);
    CUDA_MEMCPY3D c;
    shadow *made[2] = {NULL, NULL};
    CUresult r = translate(copy, &c, made);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = begin_add(FG_OP_cuGraphAddMemcpyNode, g, deps, n);
    if (!w) {
        discard(made);
        return fgc_last_error();
    }
    fg_put(w, &c, sizeof c);
    fgc_put_handle(w, ctx);
    r = finish_add(ph);
    if (r == CUDA_SUCCESS) keep(fgc_handle_id(g), fgc_handle_id(*ph), made);
    else discard(made);
    return r;
}

CUresult fgc_cuGraphMemcpyNodeSetParams(CUgraphNode node, const CUDA_MEMCPY3D *copy) {
    FGC_REQUIRE_INIT();
    CUDA_MEMCPY3D c;
    shadow *made[2] = {NULL, NULL};
    CUresult r = translate(copy, &c, made);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphMemcpyNodeSetParams);
    if (!w) {
        discard(made);
        return fgc_last_error();
    }
    fgc_put_handle(w, node);
    fg_put(w, &c, sizeof c);
    r = fgc_sync();
    if (r != CUDA_SUCCESS) {
        discard(made);
        return r;
    }
    /* The node's old shadows go from every graph that knows the node by this id; the new ones join them. */
    uint64_t nid = fgc_handle_id(node), owners[64];
    size_t no = 0;
    pthread_mutex_lock(&bmu);
    for (size_t i = 0; i < n_binds && no < 64; i++)
        if (binds[i].node == nid) owners[no++] = binds[i].owner;
    pthread_mutex_unlock(&bmu);
    for (size_t i = 0; i < no; i++) drop_owner(owners[i], nid);
    if (no == 0) owners[no++] = 0; /* a node whose graph we never saw a host copy in: keep them under no owner */
    keep(owners[0], nid, made);
    return CUDA_SUCCESS;
}

CUresult fgc_cuGraphExecMemcpyNodeSetParams(CUgraphExec e, CUgraphNode node, const CUDA_MEMCPY3D *copy,
                                            CUcontext ctx) {
    FGC_REQUIRE_INIT();
    CUDA_MEMCPY3D c;
    shadow *made[2] = {NULL, NULL};
    CUresult r = translate(copy, &c, made);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecMemcpyNodeSetParams);
    if (!w) {
        discard(made);
        return fgc_last_error();
    }
    fgc_put_handle(w, e);
    fgc_put_handle(w, node);
    fg_put(w, &c, sizeof c);
    fgc_put_handle(w, ctx);
    r = fgc_sync();
    if (r != CUDA_SUCCESS) {
        discard(made);
        return r;
    }
    drop_owner(fgc_handle_id(e), fgc_handle_id(node));
    keep(fgc_handle_id(e), fgc_handle_id(node), made);
    return CUDA_SUCCESS;
}

static CUresult add_handle_node(uint16_t op, CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, void *x) {
    CHECK_ADD(ph, deps, n);
    fg_writer *w = begin_add(op, g, deps, n);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, x);
    return finish_add(ph);
}

CUresult fgc_cuGraphAddEventRecordNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUevent ev) {
    return add_handle_node(FG_OP_cuGraphAddEventRecordNode, ph, g, deps, n, ev);
}

CUresult fgc_cuGraphAddEventWaitNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUevent ev) {
    return add_handle_node(FG_OP_cuGraphAddEventWaitNode, ph, g, deps, n, ev);
}

CUresult fgc_cuGraphAddChildGraphNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n, CUgraph child) {
    if (fgc_graph_mem_holds(fgc_handle_id(child))) return CUDA_ERROR_INVALID_VALUE; /* as the driver: no memory nodes */
    CUresult r = add_handle_node(FG_OP_cuGraphAddChildGraphNode, ph, g, deps, n, child);
    if (r == CUDA_SUCCESS) copy_owner(fgc_handle_id(child), fgc_handle_id(g)); /* the parent runs its copies */
    return r;
}

static CUresult host_cookie(const CUDA_HOST_NODE_PARAMS *p, uint64_t *cookie) {
    if (!p || !p->fn) return CUDA_ERROR_INVALID_VALUE;
    *cookie = fgc_host_node_cookie(p->fn, p->userData);
    if (!*cookie) {
        static int logged;
        return fgc_unsupported("a graph host node without a callback connection to the node", &logged);
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuGraphAddHostNode(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                const CUDA_HOST_NODE_PARAMS *p) {
    CHECK_ADD(ph, deps, n);
    uint64_t cookie;
    CUresult r = host_cookie(p, &cookie);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = begin_add(FG_OP_cuGraphAddHostNode, g, deps, n);
    if (!w) return fgc_last_error();
    fg_put_u64(w, cookie);
    return finish_add(ph);
}

CUresult fgc_cuGraphHostNodeSetParams(CUgraphNode node, const CUDA_HOST_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    uint64_t cookie;
    CUresult r = host_cookie(p, &cookie);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphHostNodeSetParams);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, node);
    fg_put_u64(w, cookie);
    return fgc_sync();
}

CUresult fgc_cuGraphExecHostNodeSetParams(CUgraphExec e, CUgraphNode node, const CUDA_HOST_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    uint64_t cookie;
    CUresult r = host_cookie(p, &cookie);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecHostNodeSetParams);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, e);
    fgc_put_handle(w, node);
    fg_put_u64(w, cookie);
    return fgc_sync();
}

static CUresult deps_change(uint16_t op, CUgraph g, const CUgraphNode *from, const CUgraphNode *to,
                            const CUgraphEdgeData *edges, size_t n) {
    FGC_REQUIRE_INIT();
    if (n > MAX_DEPS || (n && (!from || !to))) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, g);
    fg_put_u64(w, n);
    for (size_t i = 0; i < n; i++) fgc_put_handle(w, from[i]);
    fg_put_u64(w, n);
    for (size_t i = 0; i < n; i++) fgc_put_handle(w, to[i]);
    uint8_t has = edges != NULL;
    fg_put(w, &has, 1);
    if (has) fg_put(w, edges, n * sizeof *edges);
    return fgc_sync();
}

CUresult fgc_cuGraphAddDependencies_v2(CUgraph g, const CUgraphNode *from, const CUgraphNode *to,
                                       const CUgraphEdgeData *edges, size_t n) {
    return deps_change(FG_OP_cuGraphAddDependencies_v2, g, from, to, edges, n);
}

CUresult fgc_cuGraphRemoveDependencies_v2(CUgraph g, const CUgraphNode *from, const CUgraphNode *to,
                                          const CUgraphEdgeData *edges, size_t n) {
    return deps_change(FG_OP_cuGraphRemoveDependencies_v2, g, from, to, edges, n);
}

CUresult fgc_cuGraphDestroyNode(CUgraphNode node) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuGraphDestroyNode);
    if (!w) return fgc_last_error();
    fgc_memo_clear();
    fgc_put_handle(w, node);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) fgc_graph_mem_node_gone(fgc_handle_id(node)); /* its id may name another node later */
    return r;
}

/* ---- whole graphs and executables ---- */

static CUresult one_id(uint16_t op, const void *h, const void *payload, size_t plen, uint64_t *out) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, h);
    if (plen) fg_put(w, payload, plen);
    if (out) fgc_expect(out, sizeof *out);
    return fgc_sync();
}

CUresult fgc_cuGraphInstantiateWithFlags(CUgraphExec *pe, CUgraph g, unsigned long long flags) {
    if (!pe) return CUDA_ERROR_INVALID_VALUE;
    uint64_t f = flags, id = 0;
    CUresult r = one_id(FG_OP_cuGraphInstantiateWithFlags, g, &f, sizeof f, &id);
    if (r == CUDA_SUCCESS) {
        *pe = (CUgraphExec)(uintptr_t)id;
        copy_owner(fgc_handle_id(g), id);
        fgc_graph_mem_instantiated(fgc_handle_id(g), id);
    }
    return r;
}

CUresult fgc_cuGraphInstantiateWithParams(CUgraphExec *pe, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    if (!pe || !p) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuGraphInstantiateWithParams);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, g);
    fg_put_u64(w, p->flags);
    fgc_put_handle(w, p->hUploadStream);
    uint64_t id = 0, err_node = 0;
    uint32_t result = 0, res = 0;
    fgc_expect(&res, sizeof res);
    fgc_expect(&id, sizeof id);
    fgc_expect(&result, sizeof result);
    fgc_expect(&err_node, sizeof err_node);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) r = (CUresult)res; /* the driver's answer, carried in the reply with its details */
    p->result_out = r == CUDA_SUCCESS ? (CUgraphInstantiateResult)result : CUDA_GRAPH_INSTANTIATE_ERROR;
    p->hErrNode_out = (CUgraphNode)(uintptr_t)err_node;
    if (r == CUDA_SUCCESS) {
        *pe = (CUgraphExec)(uintptr_t)id;
        copy_owner(fgc_handle_id(g), id);
        fgc_graph_mem_instantiated(fgc_handle_id(g), id);
    }
    return r;
}

CUresult fgc_cuGraphExecUpdate_v2(CUgraphExec e, CUgraph g, CUgraphExecUpdateResultInfo *info) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecUpdate_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, e);
    fgc_put_handle(w, g);
    uint32_t res = 0, result = 0;
    uint64_t nodes[2] = {0, 0};
    fgc_expect(&res, sizeof res);
    fgc_expect(&result, sizeof result);
    fgc_expect(nodes, sizeof nodes);
    CUresult r = fgc_sync();
    int answered = r == CUDA_SUCCESS;
    if (answered) r = (CUresult)res; /* the driver's answer, carried in the reply with the result info */
    if (info) {
        memset(info, 0, sizeof *info);
        info->result = answered ? (CUgraphExecUpdateResult)result : CU_GRAPH_EXEC_UPDATE_ERROR;
        info->errorNode = (CUgraphNode)(uintptr_t)nodes[0];
        info->errorFromNode = (CUgraphNode)(uintptr_t)nodes[1];
    }
    if (r == CUDA_SUCCESS) { /* the executable now runs that graph's copies */
        drop_owner(fgc_handle_id(e), 0);
        copy_owner(fgc_handle_id(g), fgc_handle_id(e));
        fgc_graph_mem_updated(fgc_handle_id(e), fgc_handle_id(g));
    }
    return r;
}

CUresult fgc_cuGraphClone(CUgraph *pc, CUgraph g) {
    if (!pc) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = 0;
    CUresult r = one_id(FG_OP_cuGraphClone, g, NULL, 0, &id);
    if (r == CUDA_SUCCESS) {
        *pc = (CUgraph)(uintptr_t)id;
        copy_owner(fgc_handle_id(g), id);
        fgc_graph_mem_cloned(fgc_handle_id(g), *pc);
    }
    return r;
}

CUresult fgc_cuGraphDestroy(CUgraph g) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuGraphDestroy);
    if (!w) return fgc_last_error();
    fgc_memo_clear();
    fgc_put_handle(w, g);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        drop_owner(fgc_handle_id(g), 0);
        fgc_graph_mem_destroyed(fgc_handle_id(g));
    }
    return r;
}

CUresult fgc_cuGraphExecDestroy(CUgraphExec e) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuGraphExecDestroy);
    if (!w) return fgc_last_error();
    fgc_memo_clear();
    fgc_put_handle(w, e);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        drop_owner(fgc_handle_id(e), 0);
        fgc_graph_mem_destroyed(fgc_handle_id(e));
    }
    return r;
}

/* Fill the source shadows, launch, drain the destination shadows: all on the launch's stream. */
CUresult fgc_cuGraphLaunch(CUgraphExec e, CUstream s) {
    FGC_REQUIRE_INIT();
    uint64_t id = fgc_handle_id(e);
    pthread_mutex_lock(&bmu);
    size_t k = 0;
    for (size_t i = 0; i < n_binds; i++) k += binds[i].owner == id;
    shadow **v = k ? (shadow **)malloc(k * sizeof *v) : NULL;
    size_t n = 0;
    for (size_t i = 0; v && i < n_binds; i++)
        if (binds[i].owner == id) {
            v[n++] = binds[i].sh;
            binds[i].sh->refs++; /* held through the launch, should another thread destroy the executable */
        }
    pthread_mutex_unlock(&bmu);
    if (k && !v) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = CUDA_SUCCESS;
    for (size_t i = 0; i < n && r == CUDA_SUCCESS; i++)
        if (v[i]->pre) r = cuMemcpyHtoDAsync_v2(v[i]->dev, (const void *)(uintptr_t)v[i]->host, v[i]->size, s);
    if (r == CUDA_SUCCESS) {
        fg_writer *w = fgc_begin(FG_OP_cuGraphLaunch);
        if (!w) r = fgc_last_error();
        else {
            fgc_put_handle(w, e);
            fgc_put_handle(w, s);
            r = fgc_async();
            if (r == CUDA_SUCCESS) fgc_graph_mem_launched(id);
        }
    }
    for (size_t i = 0; i < n && r == CUDA_SUCCESS; i++)
        if (v[i]->out) r = cuMemcpyDtoHAsync_v2((void *)(uintptr_t)v[i]->host, v[i]->dev, v[i]->size, s);
    shadow *freed[64];
    size_t nf = 0;
    pthread_mutex_lock(&bmu);
    for (size_t i = 0; i < n; i++)
        if (--v[i]->refs == 0 && nf < 64) freed[nf++] = v[i];
    pthread_mutex_unlock(&bmu);
    free_shadows(freed, nf);
    free(v);
    return r;
}

/* ---- shadows made by capture_copies.c (copies on a capturing stream) ---- */

void *fgc_shadow_new(uint64_t host, uint64_t dev, size_t size, int out, int pre) {
    shadow *sh = (shadow *)calloc(1, sizeof *sh);
    if (sh) *sh = (shadow){host, dev, size, out, pre, 0};
    return sh;
}

void fgc_shadow_keep(uint64_t owner, void *sh) {
    shadow *made[2] = {(shadow *)sh, NULL};
    keep(owner, 0, made);
}

void fgc_shadow_discard(void *sh) {
    shadow *v = (shadow *)sh;
    free_shadows(&v, 1);
}

void fgc_graph_shadows_move(uint64_t from, uint64_t to) {
    if (from == to) return;
    copy_owner(from, to);
    drop_owner(from, 0);
}

void fgc_graph_shadows_drop(uint64_t owner) { drop_owner(owner, 0); }

size_t fgc_graph_shadows_count(uint64_t owner) {
    size_t k = 0;
    pthread_mutex_lock(&bmu);
    for (size_t i = 0; i < n_binds; i++) k += binds[i].owner == owner;
    pthread_mutex_unlock(&bmu);
    return k;
}
