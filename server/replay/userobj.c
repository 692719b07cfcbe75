/* userobj.c — cuUserObjectCreate for one session: "u64 cookie, u32 initial references, u32 flags". The object is
 * the node driver's, created with the callbacks.c trampoline as its destructor: when the driver drops the last
 * reference (the application's, or a graph's or executable's), the trampoline sends RUN with the cookie over the
 * client's callback connection and the client runs the application's destructor on its pointer. The object's
 * handle is a per-session virtual id (FGH_USEROBJECT); retaining and releasing it, and the references graphs own,
 * are forwarded as they are (generated code). */
#include "fgs_impl.h"
#include "fgs_session.h"

CUresult fgs_cuUserObjectCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t cookie = fg_get_u64(r);
    uint32_t refs = fg_get_u32(r), flags = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!cookie) return CUDA_ERROR_INVALID_VALUE;
    if (!S->api->cuUserObjectCreate) return fgs_missing(S, "cuUserObjectCreate");
    CUhostFn fn;
    void *arg;
    CUresult res = fgs_callback_for_graph(S, cookie, &fn, &arg);
    if (res != CUDA_SUCCESS) return res;
    CUuserObject obj = NULL;
    res = S->api->cuUserObjectCreate(&obj, arg, fn, refs, flags);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_USEROBJECT, obj));
    return res;
}
