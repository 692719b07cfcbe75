/* graph_cond.c — conditional graph nodes, forwarded: condition handles (the driver's opaque values, which the
 * application hands to its kernels) and conditional nodes, sent as cuGraphAddNode_v2 (server/replay/
 * graph_cond.c). The node's body graphs come back as graph ids its node owns; phGraph_out points at an array
 * of them the stub keeps for the process (the driver's is valid for the node's lifetime). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_DEPS 4096
#define MAX_BODIES 1024

CUresult fgc_cuGraphConditionalHandleCreate(CUgraphConditionalHandle *out, CUgraph g, CUcontext ctx,
                                            unsigned int deflt, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuGraphConditionalHandleCreate);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, g);
    fgc_put_handle(w, ctx);
    fg_put_u32(w, deflt);
    fg_put_u32(w, flags);
    uint64_t h = 0;
    fgc_expect(&h, sizeof h);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *out = (CUgraphConditionalHandle)h;
    return r;
}

CUresult fgc_graph_add_conditional(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                   CUDA_CONDITIONAL_NODE_PARAMS *c) {
    FGC_REQUIRE_INIT();
    if (!ph || (n && !deps) || n > MAX_DEPS || !c || c->size == 0 || c->size > MAX_BODIES)
        return CUDA_ERROR_INVALID_VALUE;
    CUgraph *bodies = (CUgraph *)calloc(c->size, sizeof *bodies);
    uint64_t *reply = (uint64_t *)calloc(2 + c->size, sizeof *reply);
    if (!bodies || !reply) {
        free(bodies);
        free(reply);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fg_writer *w = fgc_begin(FG_OP_cuGraphAddNode_v2);
    if (!w) {
        free(bodies);
        free(reply);
        return fgc_last_error();
    }
    fgc_put_handle(w, g);
    fg_put_u64(w, n);
    for (size_t i = 0; i < n; i++) fgc_put_handle(w, deps[i]);
    fg_put_u64(w, c->handle);
    fg_put_u32(w, (uint32_t)c->type);
    fg_put_u32(w, c->size);
    fgc_put_handle(w, c->ctx);
    uint64_t node = 0;
    uint32_t size = 0;
    fgc_expect(&node, sizeof node);
    fgc_expect(&size, sizeof size);
    fgc_expect(reply, c->size * sizeof *reply);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r == CUDA_SUCCESS && (size != c->size || got != 12 + 8ull * size)) r = CUDA_ERROR_INVALID_VALUE;
    for (uint32_t i = 0; r == CUDA_SUCCESS && i < size; i++) {
        if (!reply[i]) r = CUDA_ERROR_OUT_OF_MEMORY; /* the node could not give the body an id */
        bodies[i] = (CUgraph)(uintptr_t)reply[i];
    }
    free(reply);
    if (r != CUDA_SUCCESS) {
        free(bodies);
        return r;
    }
    *ph = (CUgraphNode)(uintptr_t)node;
    c->phGraph_out = bodies; /* kept: valid for the node's lifetime, as the driver's */
    return CUDA_SUCCESS;
}
