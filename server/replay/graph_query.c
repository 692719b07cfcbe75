/* graph_query.c — what a graph says about itself: root nodes, edges (with edge data), a node's dependencies and
 * dependents, a node's type, and the parameters of kernel, memcpy and host nodes and the child graph of a
 * child-graph node. Nodes go back as the session's virtual ids (one id per real node, as for cuGraphGetNodes).
 *
 * Kernel parameters go back packed with the function's layout, so the stub can point kernelParams into its own
 * copy. A memcpy node holds device addresses only (the stub made host memory into device shadows and maps them
 * back). A host node's function is the callback trampoline: its cookie goes back, which the stub maps to the
 * application's function and data. Kernel node attributes that hold an event carry its id. A child graph belongs to its node: it gets an id of its own, marked borrowed,
 * so the session never destroys it (cuGraphDestroy of it is refused, and the session's end skips it); the id goes
 * when its parent graph is destroyed (conditional nodes' body graphs are borrowed the same way: graph_cond.c). Lists are bounded (MAX_LIST) like every decoded count. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_LIST 4096

struct fgs_borrow {
    uint64_t id, parent; /* a child graph's id and the id of the graph whose node owns it */
};

#define NEED(fn)                                     \
    do {                                             \
        if (!S->api->fn) return fgs_missing(S, #fn); \
    } while (0)

static CUresult get_node(fgs_session *S, fg_reader *r, CUgraphNode *n) {
    uint64_t id = fg_get_u64(r);
    void *p = NULL;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (fgs_handle_get(S, FGH_GRAPHNODE, id, &p) || !p) return CUDA_ERROR_INVALID_VALUE;
    *n = (CUgraphNode)p;
    return CUDA_SUCCESS;
}

static CUresult get_graph(fgs_session *S, fg_reader *r, CUgraph *g) {
    uint64_t id = fg_get_u64(r);
    void *p = NULL;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (fgs_handle_get(S, FGH_GRAPH, id, &p) || !p) return CUDA_ERROR_INVALID_VALUE;
    *g = (CUgraph)p;
    return CUDA_SUCCESS;
}

/* ---- lists of nodes: u64 total, then min(total, cap) ids (twice for edges), then their edge data if asked ---- */

static void put_ids(fgs_session *S, fg_writer *out, const CUgraphNode *v, size_t n) {
    for (size_t i = 0; i < n; i++) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHNODE, v[i]));
}

static CUresult read_cap(fg_reader *r, uint64_t *cap, uint8_t *want_edges) {
    *cap = fg_get_u64(r);
    if (want_edges) fg_get(r, want_edges, 1);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    return *cap > MAX_LIST ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult fgs_cuGraphGetRootNodes(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphGetRootNodes);
    CUgraph g = NULL;
    uint64_t cap = 0;
    CUresult res = get_graph(S, r, &g);
    CUresult rc = read_cap(r, &cap, NULL);
    if (rc != CUDA_SUCCESS || res != CUDA_SUCCESS) return rc != CUDA_SUCCESS ? rc : res;
    size_t total = 0;
    res = S->api->cuGraphGetRootNodes(g, NULL, &total);
    if (res != CUDA_SUCCESS) return res;
    size_t n = total < cap ? total : (size_t)cap;
    CUgraphNode *v = n ? (CUgraphNode *)calloc(n, sizeof *v) : NULL;
    if (n && !v) return CUDA_ERROR_OUT_OF_MEMORY;
    if (n) res = S->api->cuGraphGetRootNodes(g, v, &n);
    if (res == CUDA_SUCCESS) {
        fg_put_u64(out, total);
        put_ids(S, out, v, n < total ? n : total);
    }
    free(v);
    return res;
}

CUresult fgs_cuGraphGetEdges_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphGetEdges_v2);
    CUgraph g = NULL;
    uint64_t cap = 0;
    uint8_t want = 0;
    CUresult res = get_graph(S, r, &g);
    CUresult rc = read_cap(r, &cap, &want);
    if (rc != CUDA_SUCCESS || res != CUDA_SUCCESS) return rc != CUDA_SUCCESS ? rc : res;
    size_t total = 0;
    res = S->api->cuGraphGetEdges_v2(g, NULL, NULL, NULL, &total);
    if (res != CUDA_SUCCESS) return res;
    size_t n = total < cap ? total : (size_t)cap;
    CUgraphNode *from = n ? (CUgraphNode *)calloc(2 * n, sizeof *from) : NULL;
    CUgraphEdgeData *ed = n && want ? (CUgraphEdgeData *)calloc(n, sizeof *ed) : NULL;
    if (n && (!from || (want && !ed))) res = CUDA_ERROR_OUT_OF_MEMORY;
    size_t got = n, asked = n;
    if (res == CUDA_SUCCESS && n) res = S->api->cuGraphGetEdges_v2(g, from, from + asked, ed, &got);
    if (res == CUDA_SUCCESS) {
        if (got < n) n = got;
        fg_put_u64(out, total);
        put_ids(S, out, from, n);
        if (n) put_ids(S, out, from + asked, n);
        if (want && n) fg_put(out, ed, n * sizeof *ed);
    }
    free(from);
    free(ed);
    return res;
}

static CUresult related(fgs_session *S, fg_reader *r, fg_writer *out, int dependents) {
    CUgraphNode node = NULL;
    uint64_t cap = 0;
    uint8_t want = 0;
    CUresult res = get_node(S, r, &node);
    CUresult rc = read_cap(r, &cap, &want);
    if (rc != CUDA_SUCCESS || res != CUDA_SUCCESS) return rc != CUDA_SUCCESS ? rc : res;
    CUresult (*fn)(CUgraphNode, CUgraphNode *, CUgraphEdgeData *, size_t *) =
        dependents ? S->api->cuGraphNodeGetDependentNodes_v2 : S->api->cuGraphNodeGetDependencies_v2;
    size_t total = 0;
    res = fn(node, NULL, NULL, &total);
    if (res != CUDA_SUCCESS) return res;
    size_t n = total < cap ? total : (size_t)cap;
    CUgraphNode *v = n ? (CUgraphNode *)calloc(n, sizeof *v) : NULL;
    CUgraphEdgeData *ed = n && want ? (CUgraphEdgeData *)calloc(n, sizeof *ed) : NULL;
    if (n && (!v || (want && !ed))) res = CUDA_ERROR_OUT_OF_MEMORY;
    size_t got = n;
    if (res == CUDA_SUCCESS && n) res = fn(node, v, ed, &got);
    if (res == CUDA_SUCCESS) {
        if (got < n) n = got;
        fg_put_u64(out, total);
        put_ids(S, out, v, n);
        if (want && n) fg_put(out, ed, n * sizeof *ed);
    }
    free(v);
    free(ed);
    return res;
}

CUresult fgs_cuGraphNodeGetDependencies_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphNodeGetDependencies_v2);
    return related(S, r, out, 0);
}

CUresult fgs_cuGraphNodeGetDependentNodes_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphNodeGetDependentNodes_v2);
    return related(S, r, out, 1);
}

CUresult fgs_cuGraphNodeGetType(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphNodeGetType);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUgraphNodeType t = CU_GRAPH_NODE_TYPE_EMPTY;
    res = S->api->cuGraphNodeGetType(node, &t);
    if (res == CUDA_SUCCESS) fg_put_u32(out, (uint32_t)t);
    return res;
}

/* ---- node parameters ---- */

/* The event as the id the session already gave it (a new id only for one it never saw). */
static CUresult event_of(fgs_session *S, fg_reader *r, fg_writer *out, int wait) {
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUevent ev = NULL;
    res = wait ? S->api->cuGraphEventWaitNodeGetEvent(node, &ev) : S->api->cuGraphEventRecordNodeGetEvent(node, &ev);
    if (res != CUDA_SUCCESS) return res;
    uint64_t id = ev ? fgs_handle_id_of(S, FGH_EVENT, ev) : 0;
    if (ev && !id) id = fgs_handle_add(S, FGH_EVENT, ev);
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphEventRecordNodeGetEvent(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphEventRecordNodeGetEvent);
    return event_of(S, r, out, 0);
}

CUresult fgs_cuGraphEventWaitNodeGetEvent(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphEventWaitNodeGetEvent);
    return event_of(S, r, out, 1);
}

/* u64 function id (or library kernel id), u64 library kernel id (0: none), dims[7], the layout (u32 n, n pairs),
 * u32 size, bytes. */
CUresult fgs_cuGraphKernelNodeGetParams_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphKernelNodeGetParams_v2);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUDA_KERNEL_NODE_PARAMS_v2 p;
    memset(&p, 0, sizeof p);
    res = S->api->cuGraphKernelNodeGetParams_v2(node, &p);
    if (res != CUDA_SUCCESS) return res;
    /* The function's id (a library kernel given in its place counts as the kernel), and the id of the library
     * kernel it is an instance of, if the session has one. */
    uint64_t fid = 0, kid = 0;
    void *fn = NULL;
    int is_kernel = 0;
    if (p.func) {
        fid = fgs_handle_id_of(S, FGH_FUNCTION, p.func);
        if (!fid && (kid = fgs_handle_id_of(S, FGH_KERNEL, p.func)) != 0) {
            fn = p.func;
            is_kernel = 1;
        }
        if (!fid && !kid) fid = fgs_handle_add(S, FGH_FUNCTION, p.func);
        fgs_table *kt = &S->tables[FGH_KERNEL];
        for (uint32_t i = 0; fid && !kid && S->api->cuKernelGetFunction && i < kt->n; i++) {
            CUfunction f = NULL;
            if (kt->real[i] && S->api->cuKernelGetFunction(&f, (CUkernel)kt->real[i]) == CUDA_SUCCESS &&
                f == p.func)
                kid = fgs_handle_id_of(S, FGH_KERNEL, kt->real[i]);
        }
        if (fid) fn = p.func;
    } else if (p.kern) {
        kid = fgs_handle_add(S, FGH_KERNEL, p.kern);
        fn = p.kern;
        is_kernel = 1;
    }
    if (!fn || (!fid && !kid)) return CUDA_ERROR_INVALID_VALUE;
    fg_put_u64(out, fid ? fid : kid);
    fg_put_u64(out, kid);
    uint32_t d[7] = {p.gridDimX, p.gridDimY, p.gridDimZ, p.blockDimX, p.blockDimY, p.blockDimZ, p.sharedMemBytes};
    fg_put(out, d, sizeof d);
    size_t layout_at = out->len;
    fgs_put_param_layout(S, fn, is_kernel, out);
    if (out->failed) return CUDA_ERROR_OUT_OF_MEMORY;
    uint32_t n = 0, total = 0;
    memcpy(&n, out->buf + layout_at, 4);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t os[2];
        memcpy(os, out->buf + layout_at + 4 + 8ull * k, 8);
        if (os[0] + os[1] > total) total = os[0] + os[1];
    }
    if (p.extra) { /* the driver answered with a parameter buffer */
        const void *buf = NULL;
        size_t size = 0;
        for (int i = 0; i < 64 && p.extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (p.extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) buf = p.extra[i + 1];
            else if (p.extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE && p.extra[i + 1]) size = *(size_t *)p.extra[i + 1];
        }
        if (size > (1u << 16) || (size && !buf)) return CUDA_ERROR_INVALID_VALUE;
        fg_put_u32(out, (uint32_t)size);
        fg_put(out, buf, size);
        return CUDA_SUCCESS;
    }
    fg_put_u32(out, total);
    uint8_t *dst = (uint8_t *)fg_put_space(out, total);
    if (!dst) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(dst, 0, total);
    for (uint32_t k = 0; k < n && p.kernelParams; k++) {
        uint32_t os[2];
        memcpy(os, out->buf + layout_at + 4 + 8ull * k, 8);
        if (p.kernelParams[k]) memcpy(dst + os[0], p.kernelParams[k], os[1]);
    }
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphMemcpyNodeGetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphMemcpyNodeGetParams);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUDA_MEMCPY3D c;
    memset(&c, 0, sizeof c);
    res = S->api->cuGraphMemcpyNodeGetParams(node, &c);
    if (res != CUDA_SUCCESS) return res;
    c.srcHost = c.dstHost = NULL; /* never this worker's addresses (none get in: graph_build.c) */
    c.srcArray = c.dstArray = NULL;
    c.reserved0 = c.reserved1 = NULL;
    fg_put(out, &c, sizeof c);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphHostNodeGetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphHostNodeGetParams);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUDA_HOST_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    res = S->api->cuGraphHostNodeGetParams(node, &p);
    if (res != CUDA_SUCCESS) return res;
    uint64_t cookie = fgs_callback_cookie_of(S, p.fn, p.userData);
    if (!cookie) return CUDA_ERROR_INVALID_VALUE;
    fg_put_u64(out, cookie);
    return CUDA_SUCCESS;
}

/* ---- kernel node attributes: values that hold an event carry its id on the wire ---- */

#define ATTR_BYTES sizeof(CUkernelNodeAttrValue)

static CUresult attr_ok(uint32_t attr) {
    if (attr == CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE) { /* it would hand out a device node handle */
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    return attr == 0 || attr >= 64 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS; /* ids are small: 1 to 16 in CUDA 13 */
}

static CUevent *event_field(CUkernelNodeAttrValue *v, uint32_t attr) {
    return attr == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT      ? &v->programmaticEvent.event
           : attr == CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT ? &v->launchCompletionEvent.event
                                                                 : NULL;
}

CUresult fgs_cuGraphKernelNodeGetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphKernelNodeGetAttribute);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    uint32_t attr = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (res != CUDA_SUCCESS || (res = attr_ok(attr)) != CUDA_SUCCESS) return res;
    CUkernelNodeAttrValue v;
    memset(&v, 0, sizeof v);
    res = S->api->cuGraphKernelNodeGetAttribute(node, (CUkernelNodeAttrID)attr, &v);
    if (res != CUDA_SUCCESS) return res;
    CUevent *ev = event_field(&v, attr);
    if (ev && *ev) { /* the id the application holds; a new one for an event the session never saw */
        uint64_t id = fgs_handle_id_of(S, FGH_EVENT, *ev);
        *ev = (CUevent)(uintptr_t)(id ? id : fgs_handle_add(S, FGH_EVENT, *ev));
    }
    fg_put(out, &v, ATTR_BYTES);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphKernelNodeSetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphKernelNodeSetAttribute);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    uint32_t attr = fg_get_u32(r);
    CUkernelNodeAttrValue v;
    fg_get(r, &v, ATTR_BYTES);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (res != CUDA_SUCCESS || (res = attr_ok(attr)) != CUDA_SUCCESS) return res;
    CUevent *ev = event_field(&v, attr);
    if (ev) {
        void *real = NULL;
        if (fgs_handle_get(S, FGH_EVENT, (uint64_t)(uintptr_t)*ev, &real)) return CUDA_ERROR_INVALID_HANDLE;
        *ev = (CUevent)real;
    }
    return S->api->cuGraphKernelNodeSetAttribute(node, (CUkernelNodeAttrID)attr, &v);
}

CUresult fgs_cuGraphKernelNodeCopyAttributes(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphKernelNodeCopyAttributes);
    CUgraphNode dst = NULL, src = NULL;
    CUresult res = get_node(S, r, &dst), res2 = get_node(S, r, &src);
    if (res == CUDA_SUCCESS) res = res2;
    return res == CUDA_SUCCESS ? S->api->cuGraphKernelNodeCopyAttributes(dst, src) : res;
}

/* ---- child graphs: borrowed ids ---- */

static int borrowed_at(fgs_session *S, uint64_t id) {
    for (size_t i = 0; i < S->n_borrowed; i++)
        if (S->borrowed[i].id == id) return (int)i;
    return -1;
}

int fgs_graph_borrowed(fgs_session *S, uint64_t id) { return borrowed_at(S, id) >= 0; }

/* The parent graph went: its children's ids go too, and theirs (never destroyed: the driver freed them). */
void fgs_graph_parent_gone(fgs_session *S, uint64_t parent) {
    for (size_t i = 0; i < S->n_borrowed;) {
        if (S->borrowed[i].parent != parent) {
            i++;
            continue;
        }
        uint64_t id = S->borrowed[i].id;
        S->borrowed[i] = S->borrowed[--S->n_borrowed];
        fgs_handle_remove(S, FGH_GRAPH, id);
        fgs_graph_parent_gone(S, id);
        i = 0;
    }
}

/* At the session's end, before its graphs are destroyed: the borrowed ones leave the table untouched. */
void fgs_graph_borrowed_close(fgs_session *S) {
    for (size_t i = 0; i < S->n_borrowed; i++) fgs_handle_remove(S, FGH_GRAPH, S->borrowed[i].id);
    free(S->borrowed);
    S->borrowed = NULL;
    S->n_borrowed = S->cap_borrowed = 0;
}

int fgs_graph_borrow(fgs_session *S, uint64_t id, uint64_t parent) {
    if (S->n_borrowed == S->cap_borrowed) {
        size_t cap = S->cap_borrowed ? S->cap_borrowed * 2 : 16;
        struct fgs_borrow *nb = (struct fgs_borrow *)realloc(S->borrowed, cap * sizeof *nb);
        if (!nb) return -1;
        S->borrowed = nb;
        S->cap_borrowed = cap;
    }
    S->borrowed[S->n_borrowed++] = (struct fgs_borrow){id, parent};
    return 0;
}

CUresult fgs_cuGraphChildGraphNodeGetGraph(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphChildGraphNodeGetGraph);
    CUgraphNode node = NULL;
    CUresult res = get_node(S, r, &node);
    if (res != CUDA_SUCCESS) return res;
    CUgraph child = NULL;
    res = S->api->cuGraphChildGraphNodeGetGraph(node, &child);
    if (res != CUDA_SUCCESS) return res;
    if (!child) return CUDA_ERROR_INVALID_VALUE;
    uint64_t pid = 0;
    if (S->api->cuGraphGetNodes) { /* the graph that holds the node: the session's graph whose nodes include it */
        fgs_table *gt = &S->tables[FGH_GRAPH];
        for (uint32_t i = 0; !pid && i < gt->n; i++) {
            size_t k = 0;
            if (!gt->real[i] || S->api->cuGraphGetNodes((CUgraph)gt->real[i], NULL, &k) != CUDA_SUCCESS || !k) continue;
            CUgraphNode *v = (CUgraphNode *)calloc(k, sizeof *v);
            if (v && S->api->cuGraphGetNodes((CUgraph)gt->real[i], v, &k) == CUDA_SUCCESS)
                for (size_t j = 0; j < k && !pid; j++)
                    if (v[j] == node) pid = fgs_handle_id_of(S, FGH_GRAPH, gt->real[i]);
            free(v);
        }
    }
    uint64_t known = fgs_handle_id_of(S, FGH_GRAPH, child);
    if (known && !fgs_graph_borrowed(S, known)) return CUDA_ERROR_INVALID_VALUE; /* cannot be: a node's own graph */
    uint64_t id = known ? known : fgs_handle_add(S, FGH_GRAPH, child);
    if (!id) return CUDA_ERROR_OUT_OF_MEMORY;
    if (!known && fgs_graph_borrow(S, id, pid) != 0) {
        fgs_handle_remove(S, FGH_GRAPH, id);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

/* A child-graph node takes its graph with it: that graph's borrowed id (and its own children's) go too. */
CUresult fgs_cuGraphDestroyNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphDestroyNode);
    uint64_t id = fg_get_u64(r);
    void *p = NULL;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (fgs_handle_get(S, FGH_GRAPHNODE, id, &p) || !p) return CUDA_ERROR_INVALID_HANDLE;
    CUgraph child = NULL;
    CUgraphNodeType t = CU_GRAPH_NODE_TYPE_EMPTY;
    uint64_t cid = 0;
    if (S->api->cuGraphNodeGetType && S->api->cuGraphChildGraphNodeGetGraph &&
        S->api->cuGraphNodeGetType((CUgraphNode)p, &t) == CUDA_SUCCESS && t == CU_GRAPH_NODE_TYPE_GRAPH &&
        S->api->cuGraphChildGraphNodeGetGraph((CUgraphNode)p, &child) == CUDA_SUCCESS)
        cid = fgs_handle_id_of(S, FGH_GRAPH, child);
    CUresult res = S->api->cuGraphDestroyNode((CUgraphNode)p);
    if (res != CUDA_SUCCESS) return res;
    fgs_handle_remove(S, FGH_GRAPHNODE, id);
    int at = cid ? borrowed_at(S, cid) : -1;
    if (at >= 0) {
        S->borrowed[at] = S->borrowed[--S->n_borrowed];
        fgs_handle_remove(S, FGH_GRAPH, cid);
        fgs_graph_parent_gone(S, cid);
    }
    return CUDA_SUCCESS;
}
