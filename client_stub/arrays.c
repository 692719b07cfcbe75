/* arrays.c — CUDA arrays, 3D copies (and the array forms of 2D and 1D copies), texture and surface objects.
 * Arrays live on the node; the application holds their virtual ids. A 3D copy whose one side is host memory is
 * packed here: the rows of a host source travel in the record without gaps, a host destination's rows come back
 * in the reply and are written into its pitched layout here, so the node never sees a client address. Copies
 * larger than one record are split into slices and row groups. Unified addresses are classified by the device
 * ranges the stub knows; mirrored host memory (managed.c) is used through its device side. The async forms
 * (cuMemcpy3DAsync_v2, and the 1D cuMemcpyHtoAAsync_v2/AtoHAsync_v2) wait on the node for their stream (their
 * bytes travel with the record and its reply); on a capturing stream, a host side opposite device memory is a
 * device shadow instead (capture_copies.c). Texture and surface objects are created on the node; their values
 * are the driver's, passed to kernels unchanged; the node's driver describes them (arrays as the application's
 * ids). */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"

static CUresult one_handle(uint16_t op, const void *desc, size_t len, uint64_t *out) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put(w, desc, len);
    fgc_expect(out, sizeof *out);
    return fgc_sync();
}

CUresult fgc_cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *d) {
    if (!pHandle || !d) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = 0;
    CUresult r = one_handle(FG_OP_cuArrayCreate_v2, d, sizeof *d, &id);
    if (r == CUDA_SUCCESS) *pHandle = (CUarray)(uintptr_t)id;
    return r;
}

CUresult fgc_cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    if (!pHandle || !d) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = 0;
    CUresult r = one_handle(FG_OP_cuArray3DCreate_v2, d, sizeof *d, &id);
    if (r == CUDA_SUCCESS) *pHandle = (CUarray)(uintptr_t)id;
    return r;
}

CUresult fgc_cuArrayDestroy(CUarray a) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuArrayDestroy);
    if (!w) return fgc_last_error();
    fgc_memo_clear();
    fgc_put_handle(w, a);
    return fgc_sync();
}

enum { SIDE_HOST, SIDE_DEVICE, SIDE_ARRAY, SIDE_BAD };

/* Classify one side; a mirrored host pointer becomes its device address. */
static int side(CUmemorytype *t, const void **host, CUdeviceptr *dev) {
    uint64_t d;
    switch (*t) {
    case CU_MEMORYTYPE_ARRAY: return SIDE_ARRAY;
    case CU_MEMORYTYPE_DEVICE: return SIDE_DEVICE;
    case CU_MEMORYTYPE_UNIFIED:
        if (fgc_device_range_find(*dev, NULL, NULL)) {
            *t = CU_MEMORYTYPE_DEVICE;
            return SIDE_DEVICE;
        }
        *host = (const void *)(uintptr_t)*dev;
        /* fall through */
    case CU_MEMORYTYPE_HOST:
        if (!*host) return SIDE_BAD;
        if (fgc_mirror_device_of(*host, &d)) {
            *t = CU_MEMORYTYPE_DEVICE;
            *dev = d;
            *host = NULL;
            return SIDE_DEVICE;
        }
        *t = CU_MEMORYTYPE_HOST;
        return SIDE_HOST;
    default: return SIDE_BAD;
    }
}

static const uint8_t *row_at(const void *base, size_t x, size_t y, size_t z, size_t pitch, size_t height) {
    return (const uint8_t *)base + ((z * height) + y) * pitch + x;
}

/* One record: at most FG_CHUNK packed host bytes. */
static CUresult copy_piece(const CUDA_MEMCPY3D *c, int hs, int hd, CUstream s, int async) {
    size_t w = c->WidthInBytes, h = c->Height ? c->Height : 1, d = c->Depth ? c->Depth : 1, n = w * h * d;
    CUDA_MEMCPY3D wire = *c;
    if (hs) {
        wire.srcHost = NULL;
        wire.srcArray = NULL;
    }
    if (hd) {
        wire.dstHost = NULL;
        wire.dstArray = NULL;
    }
    fg_writer *wr = fgc_begin(async ? FG_OP_cuMemcpy3DAsync_v2 : FG_OP_cuMemcpy3D_v2);
    if (!wr) return fgc_last_error();
    uint8_t flags[2] = {(uint8_t)hs, (uint8_t)hd};
    fg_put(wr, flags, 2);
    fg_put(wr, &wire, sizeof wire);
    fgc_put_handle(wr, async ? s : NULL);
    if (hs) {
        size_t sp = c->srcPitch ? c->srcPitch : w, sh = c->srcHeight ? c->srcHeight : h;
        fg_put_u64(wr, n);
        uint8_t *dst = (uint8_t *)fg_put_space(wr, n);
        for (size_t z = 0; dst && z < d; z++)
            for (size_t y = 0; y < h; y++)
                memcpy(dst + (z * h + y) * w, row_at(c->srcHost, c->srcXInBytes, c->srcY + y, c->srcZ + z, sp, sh), w);
    }
    uint8_t *back = NULL;
    if (hd) {
        back = (uint8_t *)malloc(n ? n : 1);
        if (!back) {
            fgc_expect(NULL, 0);
            (void)fgc_sync();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        fgc_expect(back, n);
    }
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS && hd) {
        size_t dp = c->dstPitch ? c->dstPitch : w, dh = c->dstHeight ? c->dstHeight : h;
        for (size_t z = 0; z < d; z++)
            for (size_t y = 0; y < h; y++)
                memcpy((uint8_t *)row_at(c->dstHost, c->dstXInBytes, c->dstY + y, c->dstZ + z, dp, dh),
                       back + (z * h + y) * w, w);
    }
    free(back);
    return r;
}

static CUresult copy3d(const CUDA_MEMCPY3D *in, CUstream s, int async) {
    FGC_REQUIRE_INIT();
    if (!in) return CUDA_ERROR_INVALID_VALUE;
    CUDA_MEMCPY3D c = *in;
    int ss = side(&c.srcMemoryType, &c.srcHost, &c.srcDevice);
    int ds = side(&c.dstMemoryType, (const void **)&c.dstHost, &c.dstDevice);
    if (ss == SIDE_BAD || ds == SIDE_BAD) return CUDA_ERROR_INVALID_VALUE;
    size_t w = c.WidthInBytes, h = c.Height ? c.Height : 1, d = c.Depth ? c.Depth : 1;
    if (!w || !c.Height || !c.Depth) return CUDA_SUCCESS; /* an empty copy */
    if ((c.srcPitch && c.srcPitch < w) || (c.dstPitch && c.dstPitch < w)) return CUDA_ERROR_INVALID_VALUE;
    if (ss == SIDE_HOST && ds == SIDE_HOST) { /* both here: no GPU involved */
        size_t sp = c.srcPitch ? c.srcPitch : w, sh = c.srcHeight ? c.srcHeight : h;
        size_t dp = c.dstPitch ? c.dstPitch : w, dh = c.dstHeight ? c.dstHeight : h;
        if (async) {
            CUresult r = cuStreamSynchronize(s);
            if (r != CUDA_SUCCESS) return r;
        }
        for (size_t z = 0; z < d; z++)
            for (size_t y = 0; y < h; y++)
                memmove((uint8_t *)row_at(c.dstHost, c.dstXInBytes, c.dstY + y, c.dstZ + z, dp, dh),
                        row_at(c.srcHost, c.srcXInBytes, c.srcY + y, c.srcZ + z, sp, sh), w);
        return CUDA_SUCCESS;
    }
    int hs = ss == SIDE_HOST, hd = ds == SIDE_HOST;
    CUresult cr; /* on a capturing stream, host memory opposite device memory: through a device shadow */
    if (async && hs != hd && fgc_capture_active() && fgc_capture_copy3d(&c, s, 0, &cr)) return cr;
    if (!hs && !hd) return copy_piece(&c, 0, 0, s, async);
    if (w > FG_CHUNK) {
        static int logged;
        return fgc_unsupported("a 3D copy with host memory whose rows are wider than one record", &logged);
    }
    /* Keep the host side's own pitch and height for its rows; split into slices and row groups. */
    if (hs) {
        if (!c.srcPitch) c.srcPitch = w;
        if (!c.srcHeight) c.srcHeight = h;
    }
    if (hd) {
        if (!c.dstPitch) c.dstPitch = w;
        if (!c.dstHeight) c.dstHeight = h;
    }
    size_t rows = FG_CHUNK / w;
    if (h * d * w <= FG_CHUNK) return copy_piece(&c, hs, hd, s, async);
    for (size_t z = 0; z < d; z++)
        for (size_t y = 0; y < h; y += rows) {
            CUDA_MEMCPY3D p = c;
            p.srcZ += z;
            p.dstZ += z;
            p.srcY += y;
            p.dstY += y;
            p.Depth = 1;
            p.Height = h - y < rows ? h - y : rows;
            CUresult r = copy_piece(&p, hs, hd, s, async);
            if (r != CUDA_SUCCESS) return r;
        }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemcpy3D_v2(const CUDA_MEMCPY3D *c) { return copy3d(c, NULL, 0); }
CUresult fgc_cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D *c, CUstream s) { return copy3d(c, s, 1); }

/* A 2D copy with an array on one side (copy2d.c hands those here). */
CUresult fgc_copy2d_arrays(const CUDA_MEMCPY2D *c, CUstream s, int async) {
    CUDA_MEMCPY3D p;
    memset(&p, 0, sizeof p);
    p.srcXInBytes = c->srcXInBytes;
    p.srcY = c->srcY;
    p.srcMemoryType = c->srcMemoryType;
    p.srcHost = c->srcHost;
    p.srcDevice = c->srcDevice;
    p.srcArray = c->srcArray;
    p.srcPitch = c->srcPitch;
    p.dstXInBytes = c->dstXInBytes;
    p.dstY = c->dstY;
    p.dstMemoryType = c->dstMemoryType;
    p.dstHost = c->dstHost;
    p.dstDevice = c->dstDevice;
    p.dstArray = c->dstArray;
    p.dstPitch = c->dstPitch;
    p.WidthInBytes = c->WidthInBytes;
    p.Height = c->Height;
    p.Depth = 1;
    return copy3d(&p, s, async);
}

/* The 1D copies with an array on one side or both: one-row 3D copies. A host side is read (a source) or written
 * (a destination) at the call, also by the async forms: the node waits for the stream and the call returns once
 * the copy is done, so a host source may be reused at once and a host destination holds the data on return,
 * which the asynchronous contract allows (it promises no overlap). */
static CUDA_MEMCPY3D linear(size_t n) {
    CUDA_MEMCPY3D p;
    memset(&p, 0, sizeof p);
    p.WidthInBytes = n;
    p.Height = 1;
    p.Depth = 1;
    return p;
}

static void from_array(CUDA_MEMCPY3D *p, CUarray a, size_t off) {
    p->srcMemoryType = CU_MEMORYTYPE_ARRAY;
    p->srcArray = a;
    p->srcXInBytes = off;
}

static void to_array(CUDA_MEMCPY3D *p, CUarray a, size_t off) {
    p->dstMemoryType = CU_MEMORYTYPE_ARRAY;
    p->dstArray = a;
    p->dstXInBytes = off;
}

static CUresult htoa(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t n, CUstream s, int async) {
    CUDA_MEMCPY3D p = linear(n);
    p.srcMemoryType = CU_MEMORYTYPE_HOST;
    p.srcHost = srcHost;
    to_array(&p, dstArray, dstOffset);
    return copy3d(&p, s, async);
}

static CUresult atoh(void *dstHost, CUarray srcArray, size_t srcOffset, size_t n, CUstream s, int async) {
    CUDA_MEMCPY3D p = linear(n);
    from_array(&p, srcArray, srcOffset);
    p.dstMemoryType = CU_MEMORYTYPE_HOST;
    p.dstHost = dstHost;
    return copy3d(&p, s, async);
}

CUresult fgc_cuMemcpyHtoA_v2(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t n) {
    return htoa(dstArray, dstOffset, srcHost, n, NULL, 0);
}

CUresult fgc_cuMemcpyAtoH_v2(void *dstHost, CUarray srcArray, size_t srcOffset, size_t n) {
    return atoh(dstHost, srcArray, srcOffset, n, NULL, 0);
}

CUresult fgc_cuMemcpyHtoAAsync_v2(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t n, CUstream s) {
    return htoa(dstArray, dstOffset, srcHost, n, s, 1);
}

CUresult fgc_cuMemcpyAtoHAsync_v2(void *dstHost, CUarray srcArray, size_t srcOffset, size_t n, CUstream s) {
    return atoh(dstHost, srcArray, srcOffset, n, s, 1);
}

CUresult fgc_cuMemcpyDtoA_v2(CUarray dstArray, size_t dstOffset, CUdeviceptr srcDevice, size_t n) {
    CUDA_MEMCPY3D p = linear(n);
    p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p.srcDevice = srcDevice;
    to_array(&p, dstArray, dstOffset);
    return copy3d(&p, NULL, 0);
}

CUresult fgc_cuMemcpyAtoD_v2(CUdeviceptr dstDevice, CUarray srcArray, size_t srcOffset, size_t n) {
    CUDA_MEMCPY3D p = linear(n);
    from_array(&p, srcArray, srcOffset);
    p.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    p.dstDevice = dstDevice;
    return copy3d(&p, NULL, 0);
}

CUresult fgc_cuMemcpyAtoA_v2(CUarray dstArray, size_t dstOffset, CUarray srcArray, size_t srcOffset, size_t n) {
    CUDA_MEMCPY3D p = linear(n);
    from_array(&p, srcArray, srcOffset);
    to_array(&p, dstArray, dstOffset);
    return copy3d(&p, NULL, 0);
}

CUresult fgc_cuTexObjectCreate(CUtexObject *pTexObject, const CUDA_RESOURCE_DESC *pResDesc,
                               const CUDA_TEXTURE_DESC *pTexDesc, const CUDA_RESOURCE_VIEW_DESC *pResViewDesc) {
    FGC_REQUIRE_INIT();
    if (!pTexObject || !pResDesc || !pTexDesc) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuTexObjectCreate);
    if (!w) return fgc_last_error();
    fg_put(w, pResDesc, sizeof *pResDesc);
    fg_put(w, pTexDesc, sizeof *pTexDesc);
    uint8_t has = pResViewDesc != NULL;
    fg_put(w, &has, 1);
    if (has) fg_put(w, pResViewDesc, sizeof *pResViewDesc);
    uint64_t t = 0;
    fgc_expect(&t, sizeof t);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *pTexObject = t;
    return r;
}

CUresult fgc_cuSurfObjectCreate(CUsurfObject *pSurfObject, const CUDA_RESOURCE_DESC *pResDesc) {
    if (!pSurfObject || !pResDesc) return CUDA_ERROR_INVALID_VALUE;
    uint64_t t = 0;
    CUresult r = one_handle(FG_OP_cuSurfObjectCreate, pResDesc, sizeof *pResDesc, &t);
    if (r == CUDA_SUCCESS) *pSurfObject = t;
    return r;
}

/* u64 array, u32 plane; the reply: the plane array's id. */
CUresult fgc_cuArrayGetPlane(CUarray *pPlaneArray, CUarray hArray, unsigned int planeIdx) {
    FGC_REQUIRE_INIT();
    if (!pPlaneArray) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuArrayGetPlane);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hArray);
    fg_put_u32(w, planeIdx);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *pPlaneArray = (CUarray)(uintptr_t)id;
    return r;
}

/* The node's driver answers; arrays in the description come back as the application's ids. */
static CUresult get_resource(uint16_t op, CUDA_RESOURCE_DESC *p, uint64_t obj) {
    FGC_REQUIRE_INIT();
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put_u64(w, obj);
    fgc_expect(p, sizeof *p);
    return fgc_sync();
}

CUresult fgc_cuTexObjectGetResourceDesc(CUDA_RESOURCE_DESC *pResDesc, CUtexObject texObject) {
    return get_resource(FG_OP_cuTexObjectGetResourceDesc, pResDesc, texObject);
}

CUresult fgc_cuSurfObjectGetResourceDesc(CUDA_RESOURCE_DESC *pResDesc, CUsurfObject surfObject) {
    return get_resource(FG_OP_cuSurfObjectGetResourceDesc, pResDesc, surfObject);
}

/* Pitched allocation: rows padded to 512 bytes (the driver's own alignment on current GPUs), one allocation. */
CUresult fgc_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                unsigned int ElementSizeBytes) {
    FGC_REQUIRE_INIT();
    if (!dptr || !pPitch || !WidthInBytes || !Height ||
        (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (WidthInBytes + 511) / 512 * 512;
    if (pitch < WidthInBytes || Height > SIZE_MAX / pitch) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = cuMemAlloc_v2(dptr, pitch * Height);
    if (r == CUDA_SUCCESS) *pPitch = pitch;
    return r;
}

CUresult fgc_cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels) {
    FGC_REQUIRE_INIT();
    if (!pHandle || !d) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMipmappedArrayCreate);
    if (!w) return fgc_last_error();
    fg_put(w, d, sizeof *d);
    fg_put_u32(w, levels);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *pHandle = (CUmipmappedArray)(uintptr_t)id;
    return r;
}

CUresult fgc_cuMipmappedArrayGetLevel(CUarray *pLevelArray, CUmipmappedArray m, unsigned int level) {
    FGC_REQUIRE_INIT();
    if (!pLevelArray) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMipmappedArrayGetLevel);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, m);
    fg_put_u32(w, level);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *pLevelArray = (CUarray)(uintptr_t)id;
    return r;
}

CUresult fgc_cuMipmappedArrayDestroy(CUmipmappedArray m) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuMipmappedArrayDestroy);
    if (!w) return fgc_last_error();
    fgc_memo_clear();
    fgc_put_handle(w, m);
    return fgc_sync();
}
