/* sim_capture.c - stream capture into graphs. A capture (cuStreamBeginCapture_v2 on a created stream) makes a graph
 * (sim_graph.c) and keeps the capture's current dependency set; the stream work the simulated device captures
 * becomes a node of that graph depending on the set, and the set becomes that node: kernel launches
 * (cuLaunchKernel, cuLaunchKernelEx), 1D memsets (D8/D16/D32 Async), 1D copies (HtoD, DtoH, DtoD, cuMemcpyAsync),
 * 3D copies without arrays (cuMemcpy3DAsync_v2) and host functions (cuLaunchHostFunc). cuStreamGetCaptureInfo_v3
 * hands out the graph and the set, and cuStreamUpdateCaptureDependencies_v2 replaces or extends the set, as the
 * driver's do: that is how nodes added to the graph by hand join the capture.
 *
 * Cross-stream capture, as the driver's fork and join through events: cuEventRecord on a capturing stream
 * records the stream's dependency set in the event (no node); cuStreamWaitEvent on such an event makes a stream
 * that does not capture join the capture (same graph and id, the event's set as its dependencies), and adds the
 * set to a stream of the same capture. cuStreamEndCapture must be called on the stream that began the capture
 * (else CUDA_ERROR_STREAM_CAPTURE_UNMATCHED) and ends the capture on every joined stream; a joined stream with work
 * captured after the last event of it that a stream of the capture waited on is unjoined
 * (CUDA_ERROR_STREAM_CAPTURE_UNJOINED, the graph destroyed). Simplified: any wait by a stream of the capture counts
 * as the join (the driver follows it to the origin stream), and waiting for an event of another capture is
 * CUDA_ERROR_STREAM_CAPTURE_ISOLATION.
 *
 * Any other stream work on a capturing stream (2D copies, memory operations, event waits on events not recorded in
 * the capture, synchronisation, stream-ordered allocation, graph launches...) is refused with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture, so cuStreamEndCapture then fails with
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and destroys the graph: the simulated device never runs captured work
 * at capture time. cuStreamBeginCaptureToGraph captures into the application's graph, starting from the given
 * dependency nodes (default edges only); a failed capture leaves that graph to the application.
 *
 * Capture modes: a capture keeps its mode and the thread that began it, and the thread's own mode is exchanged by
 * cuThreadExchangeStreamCaptureMode. The unsafe calls the simulated device knows are the allocations
 * cuMemAlloc_v2 and cuMemCreate (sim_capture_unsafe): from a thread in global mode while a global-mode capture runs
 * anywhere, or from a thread (global or thread-local mode) with a capture of its own not begun relaxed, they are
 * refused with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidate those captures, as the driver does; a thread in
 * relaxed mode may make them. (The driver's list of unsafe calls is longer.) Not simulated: capture of the NULL,
 * legacy or per-thread stream (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED).
 *
 * Locks: the capture table has its own mutex, taken last (after the global lock in sim_stream_check_op) and never
 * held while the graph or global lock is taken; captured work is added through the public graph calls with no
 * lock held. Captures are keyed by stream pointer and stream id, so a destroyed stream's capture never passes to
 * a new stream at the same address (its entry is recycled, and its graph destroyed, by a later capture). */
#include "sim_graph.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CAPTURES 256
#define MAX_CAPTURE_DEPS 4096

struct capture {
    CUstream s;
    long long sid; /* 0: a free entry */
    CUgraph g;
    int owned; /* the capture made g (cuStreamBeginCapture_v2); 0: the application's (cuStreamBeginCaptureToGraph) */
    int joined; /* a stream that joined the capture through an event (not the one that began it) */
    unsigned long work, work_joined; /* nodes captured on it; how many of them a stream of the capture waited for */
    CUstreamCaptureStatus status;
    CUstreamCaptureMode mode; /* the capture's, and the thread that began it */
    pthread_t thread;
    cuuint64_t id;
    CUgraphNode deps[MAX_CAPTURE_DEPS];
    size_t n;
};

static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER;
static struct capture *g_caps[MAX_CAPTURES];
static cuuint64_t g_next_capture_id;
static _Thread_local CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
static _Thread_local CUgraphNode t_deps[MAX_CAPTURE_DEPS]; /* what cuStreamGetCaptureInfo_v3 hands out */

/* The live id of stream s (0: none, or a built-in stream), asked under the global lock. */
static long long live_id(CUstream s)
{
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD)
        return 0;
    sim_lock();
    long long id = sim_stream_check(s) == CUDA_SUCCESS ? sim_stream_id(s) : 0;
    sim_unlock();
    return id;
}

/* Checks stream s under the global lock; its live id in *sid once it passed. */
static CUresult checked_id(CUstream s, long long *sid)
{
    sim_lock();
    CUresult rc = sim_stream_check(s);
    sim_unlock();
    if (rc == CUDA_SUCCESS)
        *sid = live_id(s);
    return rc;
}

/* With cap_mu held. */
static struct capture *find(CUstream s, long long sid)
{
    for (int i = 0; sid && i < MAX_CAPTURES; i++)
        if (g_caps[i] && g_caps[i]->sid == sid && g_caps[i]->s == s)
            return g_caps[i];
    return NULL;
}

/* With cap_mu held: every stream of capture id is invalidated. */
static void invalidate(cuuint64_t id)
{
    for (int i = 0; i < MAX_CAPTURES; i++)
        if (g_caps[i] && g_caps[i]->id == id)
            g_caps[i]->status = CU_STREAM_CAPTURE_STATUS_INVALIDATED;
}

/* Called with the global lock held (sim_stream_check_op): the stream's capture, invalidated by the refused work. */
CUresult sim_capture_refuse_work(CUstream s)
{
    long long sid = s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD ? 0 : sim_stream_id(s);
    if (!sid)
        return CUDA_SUCCESS;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    if (c)
        invalidate(c->id);
    pthread_mutex_unlock(&cap_mu);
    return c ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

CUresult sim_stream_check_op(CUstream s)
{
    CUresult rc = sim_stream_check(s);
    return rc == CUDA_SUCCESS ? sim_capture_refuse_work(s) : rc;
}

/* Whether work on s is to be captured (1), refused because its capture was invalidated (-1), or run (0). The
 * graph and a copy of the dependency set come back for a capture. */
static int capturing(CUstream s, CUgraph *g, CUgraphNode *deps, size_t *n)
{
    long long sid = live_id(s);
    if (!sid)
        return 0;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    int st = !c ? 0 : c->status == CU_STREAM_CAPTURE_STATUS_ACTIVE ? 1 : -1;
    if (st == 1) {
        *g = c->g;
        *n = c->n;
        memcpy(deps, c->deps, c->n * sizeof *deps);
    }
    pthread_mutex_unlock(&cap_mu);
    return st;
}

/* The captured node's outcome: the set becomes the node, or the capture is invalidated. */
static CUresult captured(CUstream s, CUresult rc, CUgraphNode node)
{
    long long sid = live_id(s);
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    if (c && rc == CUDA_SUCCESS) {
        c->deps[0] = node;
        c->n = 1;
        c->work++;
    } else if (c) {
        invalidate(c->id);
    }
    pthread_mutex_unlock(&cap_mu);
    return rc;
}

/* ---- the captured work (each returns -1 in *done when s is not capturing: the caller runs the work) ---- */

enum capture_kind { CAP_MEMSET, CAP_COPY, CAP_HOST, CAP_KERNEL };

/* Every captured work item: the node of that kind (params its node parameters; ctx for memsets and copies) joins
 * the capture, or, where the capture was invalidated, the work is refused. */
static int capture_with(CUstream s, CUresult *rc, enum capture_kind kind, const void *params, CUcontext ctx)
{
    static CUgraphNode deps[MAX_CAPTURE_DEPS];
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards deps (large: not on the stack) */
    pthread_mutex_lock(&mu);
    CUgraph g = NULL;
    size_t n = 0;
    int st = capturing(s, &g, deps, &n);
    CUgraphNode node = NULL;
    CUresult r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    if (st > 0 && kind == CAP_MEMSET)
        r = cuGraphAddMemsetNode(&node, g, deps, n, (const CUDA_MEMSET_NODE_PARAMS *)params, ctx);
    else if (st > 0 && kind == CAP_COPY)
        r = cuGraphAddMemcpyNode(&node, g, deps, n, (const CUDA_MEMCPY3D *)params, ctx);
    else if (st > 0 && kind == CAP_HOST)
        r = cuGraphAddHostNode(&node, g, deps, n, (const CUDA_HOST_NODE_PARAMS *)params);
    else if (st > 0)
        r = cuGraphAddKernelNode_v2(&node, g, deps, n, (const CUDA_KERNEL_NODE_PARAMS_v2 *)params);
    pthread_mutex_unlock(&mu);
    if (st == 0)
        return 0;
    *rc = st > 0 ? captured(s, r, node) : r;
    return 1;
}

int sim_capture_kernel(CUstream s, CUfunction f, const unsigned int grid[3], const unsigned int block[3],
                       unsigned int shmem, void **kernelParams, void **extra, CUresult *rc)
{
    CUDA_KERNEL_NODE_PARAMS_v2 p;
    memset(&p, 0, sizeof p);
    p.func = f;
    p.gridDimX = grid[0];
    p.gridDimY = grid[1];
    p.gridDimZ = grid[2];
    p.blockDimX = block[0];
    p.blockDimY = block[1];
    p.blockDimZ = block[2];
    p.sharedMemBytes = shmem;
    p.kernelParams = kernelParams;
    p.extra = extra;
    return capture_with(s, rc, CAP_KERNEL, &p, NULL);
}

int sim_capture_memset(CUstream s, CUdeviceptr dst, unsigned int value, size_t n, unsigned int width, CUresult *rc)
{
    CUDA_MEMSET_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.dst = dst;
    p.value = value;
    p.elementSize = width;
    p.width = n;
    p.height = 1;
    p.pitch = n * width;
    CUcontext ctx = NULL;
    cuCtxGetCurrent(&ctx);
    return capture_with(s, rc, CAP_MEMSET, &p, ctx);
}

/* A 1D copy: src_host / dst_host name host pointers (the others are device addresses). */
int sim_capture_copy(CUstream s, CUdeviceptr dst, void *dst_host, CUdeviceptr src, const void *src_host, size_t bytes,
                     CUresult *rc)
{
    CUDA_MEMCPY3D c;
    memset(&c, 0, sizeof c);
    c.srcMemoryType = src_host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
    c.srcHost = src_host;
    c.srcDevice = src;
    c.dstMemoryType = dst_host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
    c.dstHost = dst_host;
    c.dstDevice = dst;
    c.WidthInBytes = bytes;
    c.Height = 1;
    c.Depth = 1;
    CUcontext ctx = NULL;
    cuCtxGetCurrent(&ctx);
    return capture_with(s, rc, CAP_COPY, &c, ctx);
}

int sim_capture_copy3d(CUstream s, const CUDA_MEMCPY3D *c, CUresult *rc)
{
    if (c->srcMemoryType == CU_MEMORYTYPE_ARRAY || c->dstMemoryType == CU_MEMORYTYPE_ARRAY)
        return 0; /* refused by sim_stream_check_op where s captures */
    CUcontext ctx = NULL;
    cuCtxGetCurrent(&ctx);
    return capture_with(s, rc, CAP_COPY, c, ctx);
}

int sim_capture_host(CUstream s, CUhostFn fn, void *data, CUresult *rc)
{
    CUDA_HOST_NODE_PARAMS p = { fn, data };
    return capture_with(s, rc, CAP_HOST, &p, NULL);
}

/* ---- the capture calls ---- */

/* Begins a capture on hStream into into_graph (the application's: cuStreamBeginCaptureToGraph, the capture starts
 * with deps as its dependency set) or, when it is NULL, into a graph of its own. */
static CUresult begin(CUstream hStream, CUgraph into_graph, const CUgraphNode *deps, const CUgraphEdgeData *edges,
                      size_t n_deps, CUstreamCaptureMode mode)
{
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    if (n_deps > MAX_CAPTURE_DEPS || (n_deps && !deps))
        return CUDA_ERROR_INVALID_VALUE;
    static const CUgraphEdgeData zero;
    for (size_t i = 0; edges && i < n_deps; i++)
        if (memcmp(&edges[i], &zero, sizeof zero)) {
            sim_log_once("capture dependencies with edge data", "not simulated (default edges only)");
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    if (into_graph) { /* a graph being built, and each dependency one of its nodes */
        pthread_mutex_lock(&sim_graph_mu);
        struct sim_graph *sg = G(into_graph);
        int ok = sg != NULL;
        for (size_t i = 0; ok && i < n_deps; i++) {
            struct sim_gnode *x = N(deps[i]);
            ok = x && x->g == sg;
        }
        pthread_mutex_unlock(&sim_graph_mu);
        if (!sg)
            return CUDA_ERROR_INVALID_HANDLE;
        if (!ok)
            return CUDA_ERROR_INVALID_VALUE;
    } else if (n_deps) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    long long sid = 0;
    CUresult rc = checked_id(hStream, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!sid) {
        sim_log_once("stream capture of the NULL, legacy or per-thread stream", "not simulated");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    CUgraph stale[MAX_CAPTURES];
    size_t n_stale = 0;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(hStream, sid);
    pthread_mutex_unlock(&cap_mu);
    if (c)
        return CUDA_ERROR_ILLEGAL_STATE;
    /* entries of streams that went meanwhile are recycled (their ids are never live again) */
    for (int i = 0; i < MAX_CAPTURES; i++) {
        pthread_mutex_lock(&cap_mu);
        CUstream s = g_caps[i] ? g_caps[i]->s : NULL;
        long long was = g_caps[i] ? g_caps[i]->sid : 0;
        pthread_mutex_unlock(&cap_mu);
        if (!was || live_id(s) == was)
            continue;
        pthread_mutex_lock(&cap_mu);
        if (g_caps[i] && g_caps[i]->sid == was) {
            struct capture *x = g_caps[i];
            if (x->owned)
                stale[n_stale++] = x->g;
            for (int k = 0; !x->joined && k < MAX_CAPTURES; k++) /* its joined streams capture no more */
                if (k != i && g_caps[k] && g_caps[k]->id == x->id) {
                    free(g_caps[k]);
                    g_caps[k] = NULL;
                }
            free(x);
            g_caps[i] = NULL;
        }
        pthread_mutex_unlock(&cap_mu);
    }
    for (size_t i = 0; i < n_stale; i++)
        cuGraphDestroy(stale[i]);
    CUgraph g = into_graph;
    if (!g) {
        rc = cuGraphCreate(&g, 0);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    struct capture *nc = calloc(1, sizeof *nc);
    pthread_mutex_lock(&cap_mu);
    int slot = -1;
    for (int i = 0; nc && i < MAX_CAPTURES && slot < 0; i++)
        if (!g_caps[i])
            slot = i;
    if (slot >= 0 && !find(hStream, sid)) {
        nc->s = hStream;
        nc->sid = sid;
        nc->g = g;
        nc->owned = into_graph == NULL;
        nc->status = CU_STREAM_CAPTURE_STATUS_ACTIVE;
        nc->mode = mode;
        nc->thread = pthread_self();
        nc->id = ++g_next_capture_id;
        if (n_deps)
            memcpy(nc->deps, deps, n_deps * sizeof *deps);
        nc->n = n_deps;
        g_caps[slot] = nc;
    } else {
        rc = nc && slot >= 0 ? CUDA_ERROR_ILLEGAL_STATE : CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&cap_mu);
    if (rc != CUDA_SUCCESS) {
        free(nc);
        if (!into_graph)
            cuGraphDestroy(g);
    }
    return rc;
}

SIM_API CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    return begin(hStream, NULL, NULL, NULL, 0, mode);
}

SIM_API CUresult cuStreamBeginCaptureToGraph(CUstream hStream, CUgraph hGraph, const CUgraphNode *dependencies,
                                             const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                             CUstreamCaptureMode mode)
{
    if (!hGraph)
        return CUDA_ERROR_INVALID_VALUE;
    return begin(hStream, hGraph, dependencies, dependencyData, numDependencies, mode);
}

SIM_API CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    long long sid = 0;
    CUresult rc = checked_id(hStream, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(hStream, sid);
    struct capture x;
    int unjoined = 0;
    if (c && c->joined) {
        pthread_mutex_unlock(&cap_mu);
        return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED; /* not the stream that began it */
    }
    if (c) {
        x = *c;
        for (int i = 0; i < MAX_CAPTURES; i++) /* the capture ends on its joined streams too */
            if (g_caps[i] && g_caps[i]->id == x.id) {
                unjoined |= g_caps[i]->joined && g_caps[i]->work != g_caps[i]->work_joined;
                if (g_caps[i] != c)
                    free(g_caps[i]);
                g_caps[i] = NULL;
            }
        free(c);
    }
    pthread_mutex_unlock(&cap_mu);
    if (!c)
        return CUDA_ERROR_ILLEGAL_STATE;
    if (x.status != CU_STREAM_CAPTURE_STATUS_ACTIVE || unjoined) {
        if (x.owned) /* the application's graph stays: it destroys it */
            cuGraphDestroy(x.g);
        *phGraph = NULL;
        return unjoined && x.status == CU_STREAM_CAPTURE_STATUS_ACTIVE ? CUDA_ERROR_STREAM_CAPTURE_UNJOINED
                                                                         : CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *phGraph = x.g;
    return CUDA_SUCCESS;
}

/* Status, id, graph and the dependency set (copied per thread: valid until this thread asks again). */
static CUresult info(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g, const CUgraphNode **deps,
                     size_t *n)
{
    long long sid = 0;
    CUresult rc = checked_id(s, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    *st = c ? c->status : CU_STREAM_CAPTURE_STATUS_NONE;
    if (id)
        *id = c ? c->id : 0;
    if (g)
        *g = c ? c->g : NULL;
    size_t k = c ? c->n : 0;
    if (k)
        memcpy(t_deps, c->deps, k * sizeof *t_deps);
    pthread_mutex_unlock(&cap_mu);
    if (deps)
        *deps = k ? t_deps : NULL;
    if (n)
        *n = k;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    if (!captureStatus)
        return CUDA_ERROR_INVALID_VALUE;
    return info(hStream, captureStatus, NULL, NULL, NULL, NULL);
}

SIM_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out, const CUgraphEdgeData **edgeData_out,
                                           size_t *numDependencies_out)
{
    if (!captureStatus_out || (edgeData_out && !dependencies_out))
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, numDependencies_out);
    if (rc == CUDA_SUCCESS && edgeData_out)
        *edgeData_out = NULL; /* every edge is a default one */
    return rc;
}

static CUresult update(CUstream s, const CUgraphNode *deps, const CUgraphEdgeData *edges, size_t n, unsigned int flags)
{
    if ((n && !deps) || n > MAX_CAPTURE_DEPS ||
        (flags != CU_STREAM_ADD_CAPTURE_DEPENDENCIES && flags != CU_STREAM_SET_CAPTURE_DEPENDENCIES))
        return CUDA_ERROR_INVALID_VALUE;
    static const CUgraphEdgeData zero;
    for (size_t i = 0; edges && i < n; i++)
        if (memcmp(&edges[i], &zero, sizeof zero)) {
            sim_log_once("capture dependencies with edge data", "not simulated (default edges only)");
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    long long sid = 0;
    CUresult rc = checked_id(s, &sid);
    if (rc != CUDA_SUCCESS)
        return rc;
    CUgraph g = NULL;
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    if (c)
        g = c->g;
    pthread_mutex_unlock(&cap_mu);
    if (!c)
        return CUDA_ERROR_ILLEGAL_STATE;
    for (size_t i = 0; i < n; i++) { /* each a node of the capture's graph */
        pthread_mutex_lock(&sim_graph_mu);
        struct sim_gnode *x = N(deps[i]);
        int ok = x && x->g == G(g);
        pthread_mutex_unlock(&sim_graph_mu);
        if (!ok)
            return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&cap_mu);
    c = find(s, sid);
    if (c && c->status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
        rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    else if (c && flags == CU_STREAM_SET_CAPTURE_DEPENDENCIES)
        c->n = 0;
    for (size_t i = 0; c && rc == CUDA_SUCCESS && i < n; i++) {
        int dup = 0;
        for (size_t k = 0; k < c->n && !dup; k++)
            dup = c->deps[k] == deps[i];
        if (!dup && c->n < MAX_CAPTURE_DEPS)
            c->deps[c->n++] = deps[i];
    }
    pthread_mutex_unlock(&cap_mu);
    return c ? rc : CUDA_ERROR_ILLEGAL_STATE;
}

SIM_API CUresult cuStreamUpdateCaptureDependencies_v2(CUstream hStream, CUgraphNode *dependencies,
                                                      const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                                      unsigned int flags)
{
    return update(hStream, dependencies, dependencyData, numDependencies, flags);
}

/* ---- cross-stream capture: events recorded in a capture ---- */

struct cap_event {
    CUevent e;
    cuuint64_t id;       /* the capture it was recorded in */
    CUstream from;       /* the stream it was recorded on, with its id, and the work captured there by then */
    long long from_sid;
    unsigned long work;
    size_t n;
    CUgraphNode deps[];
};

static struct cap_event *g_evs[MAX_CAPTURES];

/* With cap_mu held: the slot of event e's capture record, or -1. */
static int ev_slot(CUevent e)
{
    for (int i = 0; i < MAX_CAPTURES; i++)
        if (g_evs[i] && g_evs[i]->e == e)
            return i;
    return -1;
}

/* With cap_mu held. */
static void ev_forget(CUevent e)
{
    int i = ev_slot(e);
    if (i >= 0) {
        free(g_evs[i]);
        g_evs[i] = NULL;
    }
}

void sim_capture_event_gone(CUevent e)
{
    pthread_mutex_lock(&cap_mu);
    ev_forget(e);
    pthread_mutex_unlock(&cap_mu);
}

int sim_capture_event_record(CUevent e, CUstream s, CUresult *rc)
{
    long long sid = live_id(s);
    sim_lock();
    CUresult ev = sim_event_check(e);
    sim_unlock();
    pthread_mutex_lock(&cap_mu);
    struct capture *c = find(s, sid);
    if (!c || ev != CUDA_SUCCESS) {
        if (ev == CUDA_SUCCESS)
            ev_forget(e); /* recorded outside a capture from now on */
        pthread_mutex_unlock(&cap_mu);
        if (c)
            *rc = ev;
        return c != NULL;
    }
    *rc = CUDA_SUCCESS;
    if (c->status != CU_STREAM_CAPTURE_STATUS_ACTIVE) {
        *rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else {
        ev_forget(e);
        int slot = -1;
        for (int i = 0; i < MAX_CAPTURES && slot < 0; i++)
            if (!g_evs[i])
                slot = i;
        struct cap_event *r = slot >= 0 ? malloc(sizeof *r + c->n * sizeof(CUgraphNode)) : NULL;
        if (!r) {
            *rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            r->e = e;
            r->id = c->id;
            r->from = s;
            r->from_sid = sid;
            r->work = c->work;
            r->n = c->n;
            memcpy(r->deps, c->deps, c->n * sizeof(CUgraphNode));
            g_evs[slot] = r;
        }
    }
    pthread_mutex_unlock(&cap_mu);
    return 1;
}

int sim_capture_event_wait(CUstream s, CUevent e, CUresult *rc)
{
    long long sid = live_id(s);
    pthread_mutex_lock(&cap_mu);
    int i = ev_slot(e);
    struct cap_event *r = i >= 0 ? g_evs[i] : NULL;
    struct capture *origin = NULL;
    for (int k = 0; r && k < MAX_CAPTURES && !origin; k++)
        if (g_caps[k] && g_caps[k]->id == r->id)
            origin = g_caps[k];
    if (r && !origin) { /* its capture is over: an ordinary event again */
        ev_forget(e);
        r = NULL;
    }
    struct capture *c = find(s, sid);
    if (!r || !sid) {
        pthread_mutex_unlock(&cap_mu);
        return 0; /* an ordinary wait (refused on a capturing stream: sim_stream_check_op) */
    }
    *rc = CUDA_SUCCESS;
    if (c && c->id != r->id) {
        invalidate(c->id);
        *rc = CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    } else if (origin->status != CU_STREAM_CAPTURE_STATUS_ACTIVE) {
        *rc = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else if (!c) { /* s joins the capture */
        int slot = -1;
        for (int k = 0; k < MAX_CAPTURES && slot < 0; k++)
            if (!g_caps[k])
                slot = k;
        struct capture *nc = slot >= 0 ? calloc(1, sizeof *nc) : NULL;
        if (!nc) {
            *rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            nc->s = s;
            nc->sid = sid;
            nc->g = origin->g;
            nc->joined = 1;
            nc->status = CU_STREAM_CAPTURE_STATUS_ACTIVE;
            nc->mode = origin->mode;
            nc->thread = origin->thread;
            nc->id = r->id;
            nc->n = r->n;
            memcpy(nc->deps, r->deps, r->n * sizeof(CUgraphNode));
            g_caps[slot] = nc;
        }
    } else { /* a stream of the capture: the event's set joins its own */
        for (size_t k = 0; k < r->n; k++) {
            int dup = 0;
            for (size_t j = 0; j < c->n && !dup; j++)
                dup = c->deps[j] == r->deps[k];
            if (!dup && c->n < MAX_CAPTURE_DEPS)
                c->deps[c->n++] = r->deps[k];
        }
    }
    if (*rc == CUDA_SUCCESS) { /* the recording stream's work up to the record is waited for: joined */
        struct capture *from = find(r->from, r->from_sid);
        if (from && from->id == r->id && from->work_joined < r->work)
            from->work_joined = r->work;
    }
    pthread_mutex_unlock(&cap_mu);
    return 1;
}

/* ---- unsafe calls ---- */

CUresult sim_capture_unsafe(void)
{
    if (t_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_SUCCESS;
    pthread_t self = pthread_self();
    int hit = 0;
    pthread_mutex_lock(&cap_mu);
    for (int i = 0; i < MAX_CAPTURES; i++) {
        struct capture *c = g_caps[i];
        if (!c || c->joined || c->status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
            continue;
        int own = pthread_equal(c->thread, self) && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED;
        int global = t_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (own || global) {
            invalidate(c->id);
            hit = 1;
        }
    }
    pthread_mutex_unlock(&cap_mu);
    return hit ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

SIM_API CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    if (*mode != CU_STREAM_CAPTURE_MODE_GLOBAL && *mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        *mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    CUstreamCaptureMode old = t_mode;
    t_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
