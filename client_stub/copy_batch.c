/* copy_batch.c — batched copies (cuMemcpyBatchAsync[_v2], cuMemcpy3DBatchAsync[_v2]) and 3D peer copies
 * (cuMemcpy3DPeer[Async], at the end). The batches are emulated as the copies
 * they list, one after the other on their stream (the driver promises no order within a batch, so this order is
 * one it may pick). Each copy of cuMemcpyBatchAsync is a unified-address copy (unified.c): device↔device stays on
 * the node, a host side moves its bytes as cuMemcpyHtoDAsync/cuMemcpyDtoHAsync do (so a batch may mix kinds), and
 * host↔host is done here once the stream has drained. Each copy of cuMemcpy3DBatchAsync becomes a
 * cuMemcpy3DAsync_v2 (arrays.c) with its pointer operands as unified addresses, rows and layers in elements turned
 * into bytes with the element size of the array side (1 between two pointers). The arguments are checked as the
 * driver documents them (every copy needs attributes with a valid source access order; not the legacy NULL
 * stream); the CUDA 12.8 forms report the failed copy's index in *failIdx (SIZE_MAX when no one copy failed). 3D
 * peer copies are 3D copies (see copy3d_peer). */
#include <stdint.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static int bad_stream(CUstream s) { return s == NULL || s == CU_STREAM_LEGACY; }

static int bad_order(CUmemcpySrcAccessOrder o) {
    return o != CU_MEMCPY_SRC_ACCESS_ORDER_STREAM && o != CU_MEMCPY_SRC_ACCESS_ORDER_DURING_API_CALL &&
           o != CU_MEMCPY_SRC_ACCESS_ORDER_ANY;
}

/* One 1D copy between unified addresses. */
static CUresult copy_one(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    if (!n) return CUDA_SUCCESS;
    int dd = fgc_device_range_find(dst, NULL, NULL), sd = fgc_device_range_find(src, NULL, NULL);
    if (dd || sd) return fgc_cuMemcpyAsync(dst, src, n, s);
    if (!dst || !src) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = cuStreamSynchronize(s); /* host to host: after the work before it on the stream */
    if (r == CUDA_SUCCESS) memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return r;
}

static CUresult batch(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count, CUmemcpyAttributes *attrs,
                      size_t *attrsIdxs, size_t numAttrs, size_t *failIdx, CUstream s) {
    FGC_REQUIRE_INIT();
    if (failIdx) *failIdx = SIZE_MAX;
    if (!count || !dsts || !srcs || !sizes || !attrs || !attrsIdxs || !numAttrs || numAttrs > count ||
        bad_stream(s))
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t k = 0; k < numAttrs; k++) /* attrs[k] covers copies attrsIdxs[k] up to the next entry's */
        if (attrsIdxs[k] >= count || (k == 0 ? attrsIdxs[0] != 0 : attrsIdxs[k] <= attrsIdxs[k - 1]) ||
            bad_order(attrs[k].srcAccessOrder))
            return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++) {
        CUresult r = copy_one(dsts[i], srcs[i], sizes[i], s);
        if (r != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return r;
        }
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemcpyBatchAsync_v2(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                                   CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, CUstream hStream) {
    return batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, NULL, hStream);
}

CUresult fgc_cuMemcpyBatchAsync(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes, size_t count,
                                CUmemcpyAttributes *attrs, size_t *attrsIdxs, size_t numAttrs, size_t *failIdx,
                                CUstream hStream) {
    return batch(dsts, srcs, sizes, count, attrs, attrsIdxs, numAttrs, failIdx, hStream);
}

static size_t format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT: return 4;
    default: return 0;
    }
}

/* The element size of an array operand (0: a format whose element size is not known here). */
static CUresult elem_of(CUarray a, size_t *elem) {
    CUDA_ARRAY3D_DESCRIPTOR d;
    memset(&d, 0, sizeof d);
    CUresult r = cuArray3DGetDescriptor_v2(&d, a);
    if (r == CUDA_SUCCESS) *elem = format_bytes(d.Format) * d.NumChannels;
    return r;
}

/* One side of a CUDA_MEMCPY3D from an operand (elem: the copy's element size). */
static CUresult operand(const CUmemcpy3DOperand *o, size_t elem, const CUextent3D *ext, CUmemorytype *type,
                        CUdeviceptr *dev, CUarray *arr, size_t *x, size_t *y, size_t *z, size_t *pitch,
                        size_t *height) {
    if (o->type == CU_MEMCPY_OPERAND_TYPE_POINTER) {
        size_t row = o->op.ptr.rowLength, layer = o->op.ptr.layerHeight;
        if ((row && row < ext->width) || (layer && layer < ext->height)) return CUDA_ERROR_INVALID_VALUE;
        *type = CU_MEMORYTYPE_UNIFIED;
        *dev = o->op.ptr.ptr;
        *pitch = (row ? row : ext->width) * elem;
        *height = layer ? layer : ext->height;
        return CUDA_SUCCESS;
    }
    if (o->type != CU_MEMCPY_OPERAND_TYPE_ARRAY || !o->op.array.array) return CUDA_ERROR_INVALID_VALUE;
    *type = CU_MEMORYTYPE_ARRAY;
    *arr = o->op.array.array;
    *x = o->op.array.offset.x * elem;
    *y = o->op.array.offset.y;
    *z = o->op.array.offset.z;
    return CUDA_SUCCESS;
}

static CUresult one_3d(const CUDA_MEMCPY3D_BATCH_OP *op, CUstream s) {
    const CUextent3D *ext = &op->extent;
    if (!ext->width || !ext->height || !ext->depth || bad_order(op->srcAccessOrder)) return CUDA_ERROR_INVALID_VALUE;
    int sa = op->src.type == CU_MEMCPY_OPERAND_TYPE_ARRAY, da = op->dst.type == CU_MEMCPY_OPERAND_TYPE_ARRAY;
    size_t elem = 1, se = 0, de = 0;
    CUresult r = CUDA_SUCCESS;
    if (sa && op->src.op.array.array) r = elem_of(op->src.op.array.array, &se);
    if (r == CUDA_SUCCESS && da && op->dst.op.array.array) r = elem_of(op->dst.op.array.array, &de);
    if (r != CUDA_SUCCESS) return r;
    if ((sa && !se) || (da && !de)) {
        static int logged;
        return fgc_unsupported("a batched 3D copy with an array of a format whose element size the stub lacks",
                               &logged);
    }
    if (sa && da && se != de) return CUDA_ERROR_INVALID_VALUE;
    if (sa || da) elem = sa ? se : de;
    CUDA_MEMCPY3D c;
    memset(&c, 0, sizeof c);
    r = operand(&op->src, elem, ext, &c.srcMemoryType, &c.srcDevice, &c.srcArray, &c.srcXInBytes, &c.srcY, &c.srcZ,
                &c.srcPitch, &c.srcHeight);
    if (r == CUDA_SUCCESS)
        r = operand(&op->dst, elem, ext, &c.dstMemoryType, &c.dstDevice, &c.dstArray, &c.dstXInBytes, &c.dstY,
                    &c.dstZ, &c.dstPitch, &c.dstHeight);
    if (r != CUDA_SUCCESS) return r;
    c.WidthInBytes = ext->width * elem;
    c.Height = ext->height;
    c.Depth = ext->depth;
    return fgc_cuMemcpy3DAsync_v2(&c, s);
}

static CUresult batch_3d(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx, unsigned long long flags,
                         CUstream s) {
    FGC_REQUIRE_INIT();
    if (failIdx) *failIdx = SIZE_MAX;
    if (!numOps || !opList || flags || bad_stream(s)) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < numOps; i++) {
        CUresult r = one_3d(&opList[i], s);
        if (r != CUDA_SUCCESS) {
            if (failIdx) *failIdx = i;
            return r;
        }
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemcpy3DBatchAsync_v2(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, unsigned long long flags,
                                     CUstream hStream) {
    return batch_3d(numOps, opList, NULL, flags, hStream);
}

CUresult fgc_cuMemcpy3DBatchAsync(size_t numOps, CUDA_MEMCPY3D_BATCH_OP *opList, size_t *failIdx,
                                  unsigned long long flags, CUstream hStream) {
    return batch_3d(numOps, opList, failIdx, flags, hStream);
}

/* ---- 3D peer copies ---- */

static int on_device(CUmemorytype t, CUdeviceptr d) {
    return t == CU_MEMORYTYPE_DEVICE || (t == CU_MEMORYTYPE_UNIFIED && fgc_device_range_find(d, NULL, NULL));
}

/* Between device memory of two devices: one cuMemcpyPeer[Async] per row, as a 1D peer copy goes. */
static CUresult peer_rows(const CUDA_MEMCPY3D_PEER *p, CUstream s, int async) {
    size_t w = p->WidthInBytes, sp = p->srcPitch ? p->srcPitch : w, dp = p->dstPitch ? p->dstPitch : w;
    size_t sh = p->srcHeight ? p->srcHeight : p->Height, dh = p->dstHeight ? p->dstHeight : p->Height;
    if (sp < w || dp < w) return CUDA_ERROR_INVALID_VALUE;
    for (size_t z = 0; z < p->Depth; z++)
        for (size_t y = 0; y < p->Height; y++) {
            CUdeviceptr src = p->srcDevice + ((p->srcZ + z) * sh + p->srcY + y) * sp + p->srcXInBytes;
            CUdeviceptr dst = p->dstDevice + ((p->dstZ + z) * dh + p->dstY + y) * dp + p->dstXInBytes;
            CUresult r = async ? fgc_cuMemcpyPeerAsync(dst, p->dstContext, src, p->srcContext, w, s)
                               : fgc_cuMemcpyPeer(dst, p->dstContext, src, p->srcContext, w);
            if (r != CUDA_SUCCESS) return r;
        }
    return CUDA_SUCCESS;
}

/* A lease gives one GPU, so both contexts are mostly on one device: then this is cuMemcpy3D[Async] (the contexts
 * only say where the memory is, which unified addressing tells already). Between two devices of one session,
 * device memory goes row by row as cuMemcpyPeer; a host side needs no peer; an array of another device is
 * refused. */
static CUresult copy3d_peer(const CUDA_MEMCPY3D_PEER *p, CUstream s, int async) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    if (!p->WidthInBytes || !p->Height || !p->Depth) return CUDA_SUCCESS; /* an empty copy */
    int sd = on_device(p->srcMemoryType, p->srcDevice), dd = on_device(p->dstMemoryType, p->dstDevice);
    int sa = p->srcMemoryType == CU_MEMORYTYPE_ARRAY, da = p->dstMemoryType == CU_MEMORYTYPE_ARRAY;
    if ((sd || sa) && (dd || da) && p->srcContext != p->dstContext) {
        CUdevice sdev = -1, ddev = -1;
        if (!p->srcContext || !p->dstContext) return CUDA_ERROR_INVALID_CONTEXT;
        CUresult r = cuCtxGetDevice_v2(&sdev, p->srcContext);
        if (r == CUDA_SUCCESS) r = cuCtxGetDevice_v2(&ddev, p->dstContext);
        if (r != CUDA_SUCCESS) return r;
        if (sdev != ddev) {
            if (sa || da) {
                static int logged;
                return fgc_unsupported("a 3D peer copy between two devices with an array side", &logged);
            }
            return peer_rows(p, s, async);
        }
    }
    CUDA_MEMCPY3D c;
    memset(&c, 0, sizeof c);
    c.srcXInBytes = p->srcXInBytes;
    c.srcY = p->srcY;
    c.srcZ = p->srcZ;
    c.srcLOD = p->srcLOD;
    c.srcMemoryType = p->srcMemoryType;
    c.srcHost = p->srcHost;
    c.srcDevice = p->srcDevice;
    c.srcArray = p->srcArray;
    c.srcPitch = p->srcPitch;
    c.srcHeight = p->srcHeight;
    c.dstXInBytes = p->dstXInBytes;
    c.dstY = p->dstY;
    c.dstZ = p->dstZ;
    c.dstLOD = p->dstLOD;
    c.dstMemoryType = p->dstMemoryType;
    c.dstHost = p->dstHost;
    c.dstDevice = p->dstDevice;
    c.dstArray = p->dstArray;
    c.dstPitch = p->dstPitch;
    c.dstHeight = p->dstHeight;
    c.WidthInBytes = p->WidthInBytes;
    c.Height = p->Height;
    c.Depth = p->Depth;
    return async ? fgc_cuMemcpy3DAsync_v2(&c, s) : fgc_cuMemcpy3D_v2(&c);
}

CUresult fgc_cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER *pCopy) { return copy3d_peer(pCopy, NULL, 0); }

CUresult fgc_cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER *pCopy, CUstream hStream) {
    return copy3d_peer(pCopy, hStream, 1);
}
