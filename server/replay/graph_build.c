/* graph_build.c — graphs built by hand: nodes of every kind the stub sends (empty, kernel, memset, memcpy,
 * event record and wait, child graph, host), dependencies, parameter updates of graph and executable nodes,
 * instantiation (with flags or parameters), executable update, cloning, launch and destruction. Node, graph,
 * executable, event and stream handles arrive as the session's virtual ids and are translated here; an id of
 * another session or kind is CUDA_ERROR_INVALID_VALUE / CUDA_ERROR_INVALID_HANDLE, never a lookup elsewhere.
 *
 * Copies in memcpy nodes are between device addresses only: the stub gives host memory in a graph a device
 * shadow it fills before and drains after each launch (client_stub/graph_build.c), and anything else the wire
 * carries (host, unified or array memory types) is refused, so a node can never read or write this worker's own
 * memory. Kernel parameters come packed, as for launches, and go to the driver as one parameter buffer. Host
 * nodes run in the client through the callback connection (callbacks.c), at every launch. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_DEPS 4096

typedef struct {
    CUgraph g;
    CUgraphNode *deps;
    size_t n;
} add_head;

static CUresult node_list(fgs_session *S, fg_reader *r, CUgraphNode **out, size_t *n) {
    uint64_t k = fg_get_u64(r);
    *out = NULL;
    *n = 0;
    if (r->failed || k > MAX_DEPS) return FGS_PROTOCOL_ERROR;
    CUgraphNode *v = k ? (CUgraphNode *)malloc(k * sizeof *v) : NULL;
    if (k && !v) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = CUDA_SUCCESS;
    for (uint64_t i = 0; i < k; i++) {
        uint64_t id = fg_get_u64(r);
        void *p = NULL;
        if (res == CUDA_SUCCESS && (r->failed || fgs_handle_get(S, FGH_GRAPHNODE, id, &p)))
            res = r->failed ? FGS_PROTOCOL_ERROR : CUDA_ERROR_INVALID_VALUE;
        if (v) v[i] = (CUgraphNode)p;
    }
    if (res != CUDA_SUCCESS) {
        free(v);
        return res;
    }
    *out = v;
    *n = (size_t)k;
    return CUDA_SUCCESS;
}

/* The graph and its dependency list; a malformed list is a protocol error whatever the graph id. */
static CUresult head(fgs_session *S, fg_reader *r, add_head *h) {
    uint64_t gid = fg_get_u64(r);
    void *g = NULL;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    int bad = fgs_handle_get(S, FGH_GRAPH, gid, &g);
    CUresult res = node_list(S, r, &h->deps, &h->n);
    if (res == CUDA_SUCCESS && bad) {
        free(h->deps);
        res = CUDA_ERROR_INVALID_VALUE;
    }
    h->g = (CUgraph)g;
    return res;
}

static CUresult added(fgs_session *S, add_head *h, CUresult res, CUgraphNode node, fg_writer *out) {
    free(h->deps);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHNODE, node));
    return res;
}

static CUresult get_handle(fgs_session *S, fg_reader *r, int kind, void **p, int null_ok) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!id && null_ok) {
        *p = NULL;
        return CUDA_SUCCESS;
    }
    return fgs_handle_get(S, kind, id, p) ? CUDA_ERROR_INVALID_HANDLE : CUDA_SUCCESS;
}

#define NEED(fn)                                        \
    do {                                                \
        if (!S->api->fn) return fgs_missing(S, #fn);    \
    } while (0)

CUresult fgs_cuGraphAddEmptyNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddEmptyNode);
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    CUgraphNode n = NULL;
    res = S->api->cuGraphAddEmptyNode(&n, h.g, h.deps, h.n);
    return added(S, &h, res, n, out);
}

/* Kernel parameters: function id, dims[7], u32 size, packed bytes (as a launch sends them). */
typedef struct {
    CUDA_KERNEL_NODE_PARAMS_v2 p;
    size_t size;
    void *extra[5];
    void *buf;
    void **kp; /* kernelParams pointing into buf, where the function's layout is known */
} kparams;

static void kparams_free(kparams *k) {
    free(k->buf);
    free(k->kp);
}

/* The packed parameters as kernelParams (one pointer per parameter, into the buffer), as the application's own
 * node would have them: the driver refuses a cooperative kernel node (its launch attribute) whose parameters come
 * as an `extra` buffer (H100, driver 580: api_graph_nodes). The function's layout comes from the driver, as for a
 * launch; where it is unknown or does not fit the bytes sent, the buffer stays in `extra`. */
static void param_pointers(fgs_session *S, kparams *k) {
    fg_writer w;
    fg_writer_init(&w, 256, 8u << 16);
    fgs_put_param_layout(S, k->p.kern ? (void *)k->p.kern : (void *)k->p.func, k->p.kern != NULL, &w);
    uint32_t n = 0;
    if (!w.failed && w.len >= 4) memcpy(&n, w.buf, 4);
    void **kp = n && !w.failed && w.len >= 4 + 8ull * n ? (void **)calloc(n, sizeof *kp) : NULL;
    for (uint32_t i = 0; kp && i < n; i++) {
        uint32_t os[2];
        memcpy(os, w.buf + 4 + 8ull * i, 8);
        if ((uint64_t)os[0] + os[1] > k->size) {
            free(kp);
            kp = NULL;
        } else {
            kp[i] = (uint8_t *)k->buf + os[0];
        }
    }
    fg_writer_free(&w);
    if (!kp) return;
    k->kp = kp;
    k->p.kernelParams = kp;
    k->p.extra = NULL;
}

static CUresult get_kernel(fgs_session *S, fg_reader *r, kparams *k) {
    uint64_t fid = fg_get_u64(r);
    uint32_t d[7];
    fg_get(r, d, sizeof d);
    uint32_t n = fg_get_u32(r);
    const uint8_t *bytes = fg_take(r, n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *f = NULL, *kern = NULL;
    memset(k, 0, sizeof *k);
    if (!fgs_handle_get(S, FGH_KERNEL, fid, &kern) && kern) {
        k->p.kern = (CUkernel)kern; /* a library kernel: the driver takes it in `kern`, in the current context */
        if (S->api->cuCtxGetCurrent(&k->p.ctx) != CUDA_SUCCESS) k->p.ctx = NULL;
    } else if (fgs_handle_get(S, FGH_FUNCTION, fid, &f) || !f) {
        return CUDA_ERROR_INVALID_HANDLE;
    } else {
        k->p.func = (CUfunction)f;
    }
    k->p.gridDimX = d[0];
    k->p.gridDimY = d[1];
    k->p.gridDimZ = d[2];
    k->p.blockDimX = d[3];
    k->p.blockDimY = d[4];
    k->p.blockDimZ = d[5];
    k->p.sharedMemBytes = d[6];
    if (n) {
        k->buf = malloc(n); /* the driver copies the parameters when the node is made or set */
        if (!k->buf) return CUDA_ERROR_OUT_OF_MEMORY;
        memcpy(k->buf, bytes, n);
        k->size = n;
        k->extra[0] = CU_LAUNCH_PARAM_BUFFER_POINTER;
        k->extra[1] = k->buf;
        k->extra[2] = CU_LAUNCH_PARAM_BUFFER_SIZE;
        k->extra[3] = &k->size;
        k->extra[4] = CU_LAUNCH_PARAM_END;
        k->p.extra = k->extra;
        param_pointers(S, k);
    }
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphAddKernelNode_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddKernelNode_v2);
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    kparams k;
    res = get_kernel(S, r, &k);
    if (res != CUDA_SUCCESS) {
        free(h.deps);
        return res;
    }
    CUgraphNode n = NULL;
    res = S->api->cuGraphAddKernelNode_v2(&n, h.g, h.deps, h.n, &k.p);
    kparams_free(&k);
    return added(S, &h, res, n, out);
}

CUresult fgs_cuGraphKernelNodeSetParams_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphKernelNodeSetParams_v2);
    void *node;
    CUresult res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    kparams k;
    if (res == CUDA_SUCCESS) res = get_kernel(S, r, &k);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuGraphKernelNodeSetParams_v2((CUgraphNode)node, &k.p);
    kparams_free(&k);
    return res;
}

CUresult fgs_cuGraphExecKernelNodeSetParams_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphExecKernelNodeSetParams_v2);
    void *exec, *node;
    CUresult res = get_handle(S, r, FGH_GRAPHEXEC, &exec, 0);
    if (res == CUDA_SUCCESS) res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    kparams k;
    if (res == CUDA_SUCCESS) res = get_kernel(S, r, &k);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuGraphExecKernelNodeSetParams_v2((CUgraphExec)exec, (CUgraphNode)node, &k.p);
    kparams_free(&k);
    return res;
}

static CUresult get_ctx(fgs_session *S, fg_reader *r, CUcontext *ctx) {
    void *c;
    CUresult res = get_handle(S, r, FGH_CONTEXT, &c, 1);
    if (res != CUDA_SUCCESS) return res;
    *ctx = (CUcontext)c;
    return *ctx ? CUDA_SUCCESS : S->api->cuCtxGetCurrent(ctx);
}

CUresult fgs_cuGraphAddMemsetNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddMemsetNode);
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    CUDA_MEMSET_NODE_PARAMS p;
    fg_get(r, &p, sizeof p);
    CUcontext ctx = NULL;
    res = r->failed ? FGS_PROTOCOL_ERROR : get_ctx(S, r, &ctx);
    CUgraphNode n = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddMemsetNode(&n, h.g, h.deps, h.n, &p, ctx);
    return added(S, &h, res, n, out);
}

/* A memcpy node's description: device addresses only (the stub turned host memory into device shadows). */
static CUresult get_copy(fg_reader *r, CUDA_MEMCPY3D *c) {
    fg_get(r, c, sizeof *c);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (c->srcMemoryType != CU_MEMORYTYPE_DEVICE || c->dstMemoryType != CU_MEMORYTYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    c->srcHost = c->dstHost = NULL;
    c->srcArray = c->dstArray = NULL;
    c->reserved0 = c->reserved1 = NULL;
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphAddMemcpyNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddMemcpyNode);
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    CUDA_MEMCPY3D c;
    CUcontext ctx = NULL;
    res = get_copy(r, &c);
    if (res == CUDA_SUCCESS) res = get_ctx(S, r, &ctx);
    CUgraphNode n = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddMemcpyNode(&n, h.g, h.deps, h.n, &c, ctx);
    return added(S, &h, res, n, out);
}

CUresult fgs_cuGraphMemcpyNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphMemcpyNodeSetParams);
    void *node;
    CUDA_MEMCPY3D c;
    CUresult res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    if (res == CUDA_SUCCESS) res = get_copy(r, &c);
    return res == CUDA_SUCCESS ? S->api->cuGraphMemcpyNodeSetParams((CUgraphNode)node, &c) : res;
}

CUresult fgs_cuGraphExecMemcpyNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphExecMemcpyNodeSetParams);
    void *exec, *node;
    CUDA_MEMCPY3D c;
    CUcontext ctx = NULL;
    CUresult res = get_handle(S, r, FGH_GRAPHEXEC, &exec, 0);
    if (res == CUDA_SUCCESS) res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    if (res == CUDA_SUCCESS) res = get_copy(r, &c);
    if (res == CUDA_SUCCESS) res = get_ctx(S, r, &ctx);
    return res == CUDA_SUCCESS ? S->api->cuGraphExecMemcpyNodeSetParams((CUgraphExec)exec, (CUgraphNode)node, &c, ctx)
                               : res;
}

static CUresult add_with_handle(fgs_session *S, fg_reader *r, fg_writer *out, int kind, int which) {
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    void *x = NULL;
    res = get_handle(S, r, kind, &x, 0);
    CUgraphNode n = NULL;
    if (res == CUDA_SUCCESS) {
        switch (which) {
        case 0: res = S->api->cuGraphAddEventRecordNode(&n, h.g, h.deps, h.n, (CUevent)x); break;
        case 1: res = S->api->cuGraphAddEventWaitNode(&n, h.g, h.deps, h.n, (CUevent)x); break;
        default: res = S->api->cuGraphAddChildGraphNode(&n, h.g, h.deps, h.n, (CUgraph)x); break;
        }
    }
    return added(S, &h, res, n, out);
}

CUresult fgs_cuGraphAddEventRecordNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddEventRecordNode);
    return add_with_handle(S, r, out, FGH_EVENT, 0);
}

CUresult fgs_cuGraphAddEventWaitNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddEventWaitNode);
    return add_with_handle(S, r, out, FGH_EVENT, 1);
}

CUresult fgs_cuGraphAddChildGraphNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddChildGraphNode);
    return add_with_handle(S, r, out, FGH_GRAPH, 2);
}

CUresult fgs_cuGraphAddHostNode(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphAddHostNode);
    add_head h;
    CUresult res = head(S, r, &h);
    if (res != CUDA_SUCCESS) return res;
    uint64_t cookie = fg_get_u64(r);
    CUDA_HOST_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    res = r->failed ? FGS_PROTOCOL_ERROR : fgs_callback_for_graph(S, cookie, &p.fn, &p.userData);
    CUgraphNode n = NULL;
    if (res == CUDA_SUCCESS) res = S->api->cuGraphAddHostNode(&n, h.g, h.deps, h.n, &p);
    return added(S, &h, res, n, out);
}

static CUresult host_params(fgs_session *S, fg_reader *r, CUDA_HOST_NODE_PARAMS *p) {
    uint64_t cookie = fg_get_u64(r);
    memset(p, 0, sizeof *p);
    return r->failed ? FGS_PROTOCOL_ERROR : fgs_callback_for_graph(S, cookie, &p->fn, &p->userData);
}

CUresult fgs_cuGraphHostNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphHostNodeSetParams);
    void *node;
    CUDA_HOST_NODE_PARAMS p;
    CUresult res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    if (res == CUDA_SUCCESS) res = host_params(S, r, &p);
    return res == CUDA_SUCCESS ? S->api->cuGraphHostNodeSetParams((CUgraphNode)node, &p) : res;
}

CUresult fgs_cuGraphExecHostNodeSetParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphExecHostNodeSetParams);
    void *exec, *node;
    CUDA_HOST_NODE_PARAMS p;
    CUresult res = get_handle(S, r, FGH_GRAPHEXEC, &exec, 0);
    if (res == CUDA_SUCCESS) res = get_handle(S, r, FGH_GRAPHNODE, &node, 0);
    if (res == CUDA_SUCCESS) res = host_params(S, r, &p);
    return res == CUDA_SUCCESS ? S->api->cuGraphExecHostNodeSetParams((CUgraphExec)exec, (CUgraphNode)node, &p) : res;
}

/* from[], to[] node ids, then (flag, edge data[]) */
static CUresult deps_change(fgs_session *S, fg_reader *r, int remove) {
    void *g;
    CUresult gres = get_handle(S, r, FGH_GRAPH, &g, 0);
    if (gres == FGS_PROTOCOL_ERROR) return gres;
    CUgraphNode *from = NULL, *to = NULL;
    size_t nf = 0, nt = 0;
    CUresult res = node_list(S, r, &from, &nf), res2 = node_list(S, r, &to, &nt); /* both read, always */
    if (res2 == FGS_PROTOCOL_ERROR || res == CUDA_SUCCESS) res = res2;
    uint8_t has_edges = 0;
    fg_get(r, &has_edges, 1);
    const uint8_t *eb = has_edges ? fg_take(r, nf * sizeof(CUgraphEdgeData)) : NULL;
    if (res == CUDA_SUCCESS && (r->failed || nf != nt)) res = r->failed ? FGS_PROTOCOL_ERROR : CUDA_ERROR_INVALID_VALUE;
    if (res == CUDA_SUCCESS && gres != CUDA_SUCCESS) res = gres;
    CUgraphEdgeData *edges = NULL;
    if (res == CUDA_SUCCESS && eb && nf) {
        edges = (CUgraphEdgeData *)malloc(nf * sizeof *edges);
        if (!edges) res = CUDA_ERROR_OUT_OF_MEMORY;
        else memcpy(edges, eb, nf * sizeof *edges);
    }
    if (res == CUDA_SUCCESS)
        res = remove ? S->api->cuGraphRemoveDependencies_v2((CUgraph)g, from, to, edges, nf)
                     : S->api->cuGraphAddDependencies_v2((CUgraph)g, from, to, edges, nf);
    free(from);
    free(to);
    free(edges);
    return res;
}

CUresult fgs_cuGraphAddDependencies_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphAddDependencies_v2);
    return deps_change(S, r, 0);
}

CUresult fgs_cuGraphRemoveDependencies_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphRemoveDependencies_v2);
    return deps_change(S, r, 1);
}

/* ---- instantiate, update, clone, launch, destroy ---- */

CUresult fgs_cuGraphInstantiateWithParams(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphInstantiateWithParams);
    void *g, *s;
    CUresult res = get_handle(S, r, FGH_GRAPH, &g, 0);
    uint64_t flags = fg_get_u64(r);
    if (res == CUDA_SUCCESS) res = get_handle(S, r, FGH_STREAM, &s, 1);
    if (res != CUDA_SUCCESS) return r->failed ? FGS_PROTOCOL_ERROR : res;
    CUDA_GRAPH_INSTANTIATE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    p.hUploadStream = (CUstream)s;
    CUgraphExec e = NULL;
    res = S->api->cuGraphInstantiateWithParams(&e, (CUgraph)g, &p);
    /* The driver's answer travels in the reply (outputs of a failed call would not): the client returns it. */
    fg_put_u32(out, (uint32_t)res);
    fg_put_u64(out, res == CUDA_SUCCESS ? fgs_handle_add(S, FGH_GRAPHEXEC, e) : 0);
    fg_put_u32(out, (uint32_t)p.result_out);
    fg_put_u64(out, p.hErrNode_out ? fgs_handle_add(S, FGH_GRAPHNODE, p.hErrNode_out) : 0);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphExecUpdate_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphExecUpdate_v2);
    void *e, *g;
    CUresult res = get_handle(S, r, FGH_GRAPHEXEC, &e, 0);
    if (res == CUDA_SUCCESS) res = get_handle(S, r, FGH_GRAPH, &g, 0);
    if (res != CUDA_SUCCESS) return res;
    CUgraphExecUpdateResultInfo info;
    memset(&info, 0, sizeof info);
    res = S->api->cuGraphExecUpdate_v2((CUgraphExec)e, (CUgraph)g, &info);
    fg_put_u32(out, (uint32_t)res); /* as above: the result info matters most when the update fails */
    fg_put_u32(out, (uint32_t)info.result);
    fg_put_u64(out, info.errorNode ? fgs_handle_add(S, FGH_GRAPHNODE, info.errorNode) : 0);
    fg_put_u64(out, info.errorFromNode ? fgs_handle_add(S, FGH_GRAPHNODE, info.errorFromNode) : 0);
    return CUDA_SUCCESS;
}

CUresult fgs_cuGraphInstantiateWithFlags(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphInstantiateWithFlags);
    void *g;
    CUresult res = get_handle(S, r, FGH_GRAPH, &g, 0);
    uint64_t flags = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (res != CUDA_SUCCESS) return res;
    CUgraphExec e = NULL;
    res = S->api->cuGraphInstantiateWithFlags(&e, (CUgraph)g, flags);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPHEXEC, e));
    return res;
}

CUresult fgs_cuGraphLaunch(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphLaunch);
    uint64_t eid = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *e, *s;
    if (fgs_handle_get(S, FGH_GRAPHEXEC, eid, &e) || fgs_handle_get(S, FGH_STREAM, sid, &s))
        return CUDA_ERROR_INVALID_HANDLE;
    return S->api->cuGraphLaunch((CUgraphExec)e, (CUstream)s);
}

CUresult fgs_cuGraphClone(fgs_session *S, fg_reader *r, fg_writer *out) {
    NEED(cuGraphClone);
    void *g;
    CUresult res = get_handle(S, r, FGH_GRAPH, &g, 0);
    if (res != CUDA_SUCCESS) return res;
    CUgraph c = NULL;
    res = S->api->cuGraphClone(&c, (CUgraph)g);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_GRAPH, c));
    return res;
}

CUresult fgs_cuGraphDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphDestroy);
    uint64_t id = fg_get_u64(r);
    void *g;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (fgs_handle_get(S, FGH_GRAPH, id, &g)) return CUDA_ERROR_INVALID_HANDLE;
    if (fgs_graph_borrowed(S, id)) return CUDA_ERROR_INVALID_VALUE; /* a child graph: its node owns it */
    /* Its nodes' ids go with it (else a session that once built a graph would count as holding one, and could
     * never park): the nodes are asked for first, as they are gone after. */
    size_t n = 0;
    CUgraphNode *nodes = NULL;
    if (S->api->cuGraphGetNodes && S->api->cuGraphGetNodes((CUgraph)g, NULL, &n) == CUDA_SUCCESS && n &&
        (nodes = (CUgraphNode *)malloc(n * sizeof *nodes)) != NULL &&
        S->api->cuGraphGetNodes((CUgraph)g, nodes, &n) != CUDA_SUCCESS)
        n = 0;
    CUresult res = S->api->cuGraphDestroy((CUgraph)g);
    if (res == CUDA_SUCCESS) {
        fgs_handle_remove(S, FGH_GRAPH, id);
        fgs_graph_parent_gone(S, id);
        for (size_t i = 0; nodes && i < n; i++)
            fgs_handle_remove(S, FGH_GRAPHNODE, fgs_handle_id_of(S, FGH_GRAPHNODE, nodes[i]));
    }
    free(nodes);
    return res;
}

CUresult fgs_cuGraphExecDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    NEED(cuGraphExecDestroy);
    uint64_t id = fg_get_u64(r);
    void *e;
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (fgs_handle_get(S, FGH_GRAPHEXEC, id, &e)) return CUDA_ERROR_INVALID_HANDLE;
    CUresult res = S->api->cuGraphExecDestroy((CUgraphExec)e);
    if (res == CUDA_SUCCESS) fgs_handle_remove(S, FGH_GRAPHEXEC, id);
    return res;
}
