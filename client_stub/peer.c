/* peer.c — peer access between the GPUs of one session: cuCtxEnablePeerAccess / cuCtxDisablePeerAccess (sync:
 * their answer is the driver's, and the node grants or takes back VMM access to the peer device's memory,
 * server/replay/peer.c) and cuMemcpyPeer[Async] (async, like device-to-device copies: the bytes never leave the
 * node). cuDeviceCanAccessPeer and cuDeviceGetP2PAttribute are generic forwarded queries. */
#include "fgc_impl.h"
#include "fgc_internal.h"

CUresult fgc_cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags) {
    FGC_REQUIRE_INIT();
    if (!peerContext) return CUDA_ERROR_INVALID_CONTEXT;
    fg_writer *w = fgc_begin(FG_OP_cuCtxEnablePeerAccess);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, peerContext);
    fg_put_u32(w, Flags);
    return fgc_sync();
}

CUresult fgc_cuCtxDisablePeerAccess(CUcontext peerContext) {
    FGC_REQUIRE_INIT();
    if (!peerContext) return CUDA_ERROR_INVALID_CONTEXT;
    fg_writer *w = fgc_begin(FG_OP_cuCtxDisablePeerAccess);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, peerContext);
    return fgc_sync();
}

static CUresult copy_peer(uint16_t op, CUdeviceptr dst, CUcontext dctx, CUdeviceptr src, CUcontext sctx, size_t n,
                          int async, CUstream s) {
    FGC_REQUIRE_INIT();
    if (!dctx || !sctx) return CUDA_ERROR_INVALID_CONTEXT;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dst);
    fgc_put_handle(w, dctx);
    fg_put_u64(w, src);
    fgc_put_handle(w, sctx);
    fg_put_u64(w, n);
    if (async) fgc_put_handle(w, s);
    return fgc_async();
}

CUresult fgc_cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice, CUcontext srcContext,
                          size_t ByteCount) {
    return copy_peer(FG_OP_cuMemcpyPeer, dstDevice, dstContext, srcDevice, srcContext, ByteCount, 0, NULL);
}

CUresult fgc_cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                               CUcontext srcContext, size_t ByteCount, CUstream hStream) {
    return copy_peer(FG_OP_cuMemcpyPeerAsync, dstDevice, dstContext, srcDevice, srcContext, ByteCount, 1, hStream);
}
