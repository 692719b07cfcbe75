/* userobj.c — cuUserObjectCreate. The object lives on the node (server/replay/userobj.c); its destructor is the
 * application's function and pointer, registered here like a host function (callbacks.c), so when the node's
 * driver drops the last reference the destructor runs in this process, on the callback thread, as the driver's
 * own runs on one of its threads. Without a callback connection to the node no destructor could run, so the call
 * is refused then (CUDA_ERROR_NOT_SUPPORTED, logged once). Retain, release and the references graphs own are
 * forwarded as they are (generated code). */
#include "fgc_impl.h"
#include "fgc_internal.h"

CUresult fgc_cuUserObjectCreate(CUuserObject *object_out, void *ptr, CUhostFn destroy, unsigned int initialRefcount,
                                unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!object_out || !destroy) return CUDA_ERROR_INVALID_VALUE;
    uint64_t cookie = fgc_host_node_cookie(destroy, ptr);
    if (!cookie) {
        static int logged;
        return fgc_unsupported("cuUserObjectCreate without a callback connection to the node (its destructor could "
                               "not run here)",
                               &logged);
    }
    fg_writer *w = fgc_begin(FG_OP_cuUserObjectCreate);
    if (!w) return fgc_last_error();
    fg_put_u64(w, cookie);
    fg_put_u32(w, initialRefcount);
    fg_put_u32(w, flags);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *object_out = (CUuserObject)(uintptr_t)id;
    return r;
}
