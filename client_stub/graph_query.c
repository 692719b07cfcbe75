/* graph_query.c — what a graph says about itself, asked of the node (server/replay/graph_query.c): root nodes,
 * edges and a node's dependencies and dependents (with edge data when asked), a node's type, the parameters of
 * kernel, memcpy and host nodes, and a child-graph node's graph.
 *
 * What the node cannot say as the application would see it is put back here:
 *   - kernel parameters come back packed with the function's layout; kernelParams points into a copy kept per
 *     node, valid until the next query of that node (the driver's stays valid until the node changes); the
 *     function comes with the library kernel it belongs to, if any (the runtime finds its kernels by kern);
 *   - a memcpy node's device shadows of host memory (graph_build.c) are reported as the host memory given;
 *   - a host node's cookie is the application's function and data (callbacks.c); an event node's event is the
 *     id the application holds;
 *   - memory allocation and free nodes, emulated here (graph_mem.c), answer their own type.
 * Counts follow the driver: a NULL array asks for the count; otherwise up to *num entries come back and *num
 * says how many. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_image.h"
#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_LIST 4096

/* u64 total, then k arrays of min(total, cap) ids, then the edge data if asked. */
static CUresult list(uint16_t op, const void *h, size_t *num, int k, CUgraphNode *a, CUgraphNode *b,
                     CUgraphEdgeData *ed) {
    FGC_REQUIRE_INIT();
    if (!num) return CUDA_ERROR_INVALID_VALUE;
    uint64_t cap = a ? (uint64_t)*num : 0;
    if (cap > MAX_LIST) cap = MAX_LIST;
    size_t per = (size_t)k * 8 + (ed ? sizeof(CUgraphEdgeData) : 0);
    uint8_t *buf = cap ? (uint8_t *)malloc(cap * per) : NULL;
    if (cap && !buf) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_writer *w = fgc_begin(op);
    if (!w) {
        free(buf);
        return fgc_last_error();
    }
    fgc_put_handle(w, h);
    fg_put_u64(w, cap);
    if (op != FG_OP_cuGraphGetRootNodes) {
        uint8_t want = ed != NULL;
        fg_put(w, &want, 1);
    }
    uint64_t total = 0;
    fgc_expect(&total, sizeof total);
    if (cap) fgc_expect(buf, cap * per);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r == CUDA_SUCCESS) {
        uint64_t n = total < cap ? total : cap;
        if (got != sizeof total + n * per) r = CUDA_ERROR_INVALID_VALUE;
        for (uint64_t i = 0; r == CUDA_SUCCESS && i < n; i++) {
            uint64_t id;
            memcpy(&id, buf + 8 * i, 8);
            a[i] = (CUgraphNode)(uintptr_t)id;
            if (k == 2) {
                memcpy(&id, buf + 8 * (n + i), 8);
                b[i] = (CUgraphNode)(uintptr_t)id;
            }
        }
        if (r == CUDA_SUCCESS && ed && n) memcpy(ed, buf + 8 * k * n, n * sizeof *ed);
        for (size_t i = (size_t)n; r == CUDA_SUCCESS && a && i < *num; i++) { /* the rest NULL, as the driver */
            a[i] = NULL;
            if (b) b[i] = NULL;
        }
        if (r == CUDA_SUCCESS) *num = a ? (size_t)n : (size_t)total;
    }
    free(buf);
    return r;
}

CUresult fgc_cuGraphGetRootNodes(CUgraph g, CUgraphNode *roots, size_t *num) {
    return list(FG_OP_cuGraphGetRootNodes, g, num, 1, roots, NULL, NULL);
}

CUresult fgc_cuGraphGetEdges_v2(CUgraph g, CUgraphNode *from, CUgraphNode *to, CUgraphEdgeData *ed, size_t *num) {
    if ((!from) != (!to) || (ed && !from)) return CUDA_ERROR_INVALID_VALUE;
    return list(FG_OP_cuGraphGetEdges_v2, g, num, 2, from, to, ed);
}

CUresult fgc_cuGraphNodeGetDependencies_v2(CUgraphNode node, CUgraphNode *deps, CUgraphEdgeData *ed, size_t *num) {
    if (ed && !deps) return CUDA_ERROR_INVALID_VALUE;
    return list(FG_OP_cuGraphNodeGetDependencies_v2, node, num, 1, deps, NULL, ed);
}

CUresult fgc_cuGraphNodeGetDependentNodes_v2(CUgraphNode node, CUgraphNode *deps, CUgraphEdgeData *ed, size_t *num) {
    if (ed && !deps) return CUDA_ERROR_INVALID_VALUE;
    return list(FG_OP_cuGraphNodeGetDependentNodes_v2, node, num, 1, deps, NULL, ed);
}

static CUresult one(uint16_t op, const void *h, void *out, size_t n) {
    FGC_REQUIRE_INIT();
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, h);
    fgc_expect(out, n);
    return fgc_sync();
}

CUresult fgc_cuGraphNodeGetType(CUgraphNode node, CUgraphNodeType *type) {
    if (!type) return CUDA_ERROR_INVALID_VALUE;
    if (fgc_graph_mem_node_type(fgc_handle_id(node), type)) return CUDA_SUCCESS;
    uint32_t t = 0;
    CUresult r = one(FG_OP_cuGraphNodeGetType, node, &t, sizeof t);
    if (r == CUDA_SUCCESS) *type = (CUgraphNodeType)t;
    return r;
}

CUresult fgc_cuGraphMemcpyNodeGetParams(CUgraphNode node, CUDA_MEMCPY3D *p) {
    CUDA_MEMCPY3D c;
    CUresult r = one(FG_OP_cuGraphMemcpyNodeGetParams, node, &c, sizeof c);
    if (r != CUDA_SUCCESS) return r;
    void *host;
    if (fgc_graph_shadow_host(c.srcDevice, &host)) {
        c.srcMemoryType = CU_MEMORYTYPE_HOST;
        c.srcHost = host;
        c.srcDevice = 0;
    }
    if (fgc_graph_shadow_host(c.dstDevice, &host)) {
        c.dstMemoryType = CU_MEMORYTYPE_HOST;
        c.dstHost = host;
        c.dstDevice = 0;
    }
    *p = c;
    return CUDA_SUCCESS;
}

CUresult fgc_cuGraphHostNodeGetParams(CUgraphNode node, CUDA_HOST_NODE_PARAMS *p) {
    uint64_t cookie = 0;
    CUresult r = one(FG_OP_cuGraphHostNodeGetParams, node, &cookie, sizeof cookie);
    if (r != CUDA_SUCCESS) return r;
    CUhostFn fn;
    void *data;
    if (!fgc_host_node_lookup(cookie, &fn, &data)) return CUDA_ERROR_INVALID_VALUE;
    p->fn = fn;
    p->userData = data;
    return CUDA_SUCCESS;
}

CUresult fgc_cuGraphEventRecordNodeGetEvent(CUgraphNode node, CUevent *ev) {
    uint64_t id = 0;
    CUresult r = one(FG_OP_cuGraphEventRecordNodeGetEvent, node, &id, sizeof id);
    if (r == CUDA_SUCCESS) *ev = (CUevent)(uintptr_t)id;
    return r;
}

CUresult fgc_cuGraphEventWaitNodeGetEvent(CUgraphNode node, CUevent *ev) {
    uint64_t id = 0;
    CUresult r = one(FG_OP_cuGraphEventWaitNodeGetEvent, node, &id, sizeof id);
    if (r == CUDA_SUCCESS) *ev = (CUevent)(uintptr_t)id;
    return r;
}

CUresult fgc_cuGraphKernelNodeGetAttribute(CUgraphNode node, CUkernelNodeAttrID attr, CUkernelNodeAttrValue *v) {
    FGC_REQUIRE_INIT();
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuGraphKernelNodeGetAttribute);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, node);
    fg_put_u32(w, (uint32_t)attr);
    fgc_expect(v, sizeof *v); /* an event in it is the id the application holds */
    return fgc_sync();
}

CUresult fgc_cuGraphKernelNodeSetAttribute(CUgraphNode node, CUkernelNodeAttrID attr, const CUkernelNodeAttrValue *v) {
    FGC_REQUIRE_INIT();
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuGraphKernelNodeSetAttribute);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, node);
    fg_put_u32(w, (uint32_t)attr);
    fg_put(w, v, sizeof *v);
    return fgc_sync();
}

CUresult fgc_cuGraphKernelNodeCopyAttributes(CUgraphNode dst, CUgraphNode src) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuGraphKernelNodeCopyAttributes);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, dst);
    fgc_put_handle(w, src);
    return fgc_sync();
}

CUresult fgc_cuGraphChildGraphNodeGetGraph(CUgraphNode node, CUgraph *child) {
    uint64_t id = 0;
    CUresult r = one(FG_OP_cuGraphChildGraphNodeGetGraph, node, &id, sizeof id);
    if (r == CUDA_SUCCESS) *child = (CUgraph)(uintptr_t)id;
    return r;
}

/* ---- kernel node parameters ---- */

#define MAX_PARAMS 4096
#define MAX_PARAM_BYTES 65536

typedef struct {
    uint64_t node;
    uint8_t *buf;
    void **ptrs;
} kept_params;

static pthread_mutex_t kmu = PTHREAD_MUTEX_INITIALIZER;
static kept_params *kept;
static size_t n_kept, cap_kept;

/* Keeps (buf, ptrs) as node's answer, freeing the one it replaces. 0, or -1 when out of memory. */
static int keep_params(uint64_t node, uint8_t *buf, void **ptrs) {
    pthread_mutex_lock(&kmu);
    size_t i = 0;
    while (i < n_kept && kept[i].node != node) i++;
    if (i == n_kept && n_kept == cap_kept) {
        size_t cap = cap_kept ? cap_kept * 2 : 32;
        kept_params *nk = (kept_params *)realloc(kept, cap * sizeof *nk);
        if (!nk) {
            pthread_mutex_unlock(&kmu);
            return -1;
        }
        kept = nk;
        cap_kept = cap;
    }
    if (i == n_kept) n_kept++;
    else {
        free(kept[i].buf);
        free(kept[i].ptrs);
    }
    kept[i] = (kept_params){node, buf, ptrs};
    pthread_mutex_unlock(&kmu);
    return 0;
}

CUresult fgc_cuGraphKernelNodeGetParams_v2(CUgraphNode node, CUDA_KERNEL_NODE_PARAMS *p) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    size_t max = 8 + 8 + 28 + 4 + 8 * MAX_PARAMS + 4 + MAX_PARAM_BYTES;
    uint8_t *rep = NULL;
    CUresult r;
    fg_writer *w = fgc_begin_var(FG_OP_cuGraphKernelNodeGetParams_v2, max, &rep, &r);
    if (!w) return r;
    fgc_put_handle(w, node);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(rep, max, &rd)) != CUDA_SUCCESS) return r;
    uint64_t fid = fg_get_u64(&rd), kid = fg_get_u64(&rd);
    uint32_t d[7];
    fg_get(&rd, d, sizeof d);
    uint32_t n = fg_get_u32(&rd);
    const uint8_t *pairs_at = n <= MAX_PARAMS ? fg_take(&rd, 8ull * n) : NULL;
    uint32_t size = fg_get_u32(&rd);
    const uint8_t *bytes = size <= MAX_PARAM_BYTES ? fg_take(&rd, size) : NULL;
    if (rd.failed || !pairs_at || (size && !bytes) || rd.p != rd.end) {
        free(rep);
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint32_t *pairs = (uint32_t *)malloc(8ull * (n ? n : 1));
    uint8_t *buf = (uint8_t *)malloc(size ? size : 1);
    void **ptrs = (void **)calloc(n ? n : 1, sizeof *ptrs);
    if (!pairs || !buf || !ptrs) {
        free(pairs), free(buf), free(ptrs), free(rep);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(pairs, pairs_at, 8ull * n);
    memcpy(buf, bytes, size);
    for (uint32_t k = 0; k < n; k++)
        if ((uint64_t)pairs[2 * k] + pairs[2 * k + 1] <= size) ptrs[k] = buf + pairs[2 * k];
    free(rep);
    uint32_t kn = 0, kt = 0, *kp = NULL;
    size_t kc = 0;
    if (fgc_layout_get(fid, &kn, &kt, &kp, &kc) == -1) fgc_layout_put(fid, n, pairs, ""); /* named first here */
    else free(pairs);
    free(kp);
    if (keep_params(fgc_handle_id(node), buf, ptrs) != 0) {
        free(buf), free(ptrs);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memset(p, 0, sizeof *p);
    /* The function, and the library kernel it is an instance of: the runtime looks its own entry up by kern. */
    p->func = (CUfunction)(uintptr_t)fid;
    p->kern = (CUkernel)(uintptr_t)kid;
    p->gridDimX = d[0];
    p->gridDimY = d[1];
    p->gridDimZ = d[2];
    p->blockDimX = d[3];
    p->blockDimY = d[4];
    p->blockDimZ = d[5];
    p->sharedMemBytes = d[6];
    p->kernelParams = ptrs;
    return CUDA_SUCCESS;
}
