/* tensormap.c — tensor maps (TMA descriptors, as Triton makes them for Hopper): cuTensorMapEncodeTiled,
 * cuTensorMapEncodeIm2col, cuTensorMapEncodeIm2colWide and cuTensorMapReplaceAddress. The encoding is the
 * driver's and there is none here, so the parameters go to the node (server/replay/tensormap.c has the record
 * layouts), whose driver encodes the map; its 128 bytes come back into the application's map. The stub checks
 * only what it must to send the call: the map's 64-byte alignment (the driver's own rule), a rank of 1..5 (the
 * arrays' lengths) and the arrays' presence; the node's driver checks the values. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_RANK 5

static int map_ok(const CUtensorMap *m) { return m && (uintptr_t)m % 64 == 0; }

static void put_head(fg_writer *w, unsigned type, unsigned rank, const void *addr, const cuuint64_t *dim,
                     const cuuint64_t *stride) {
    fg_put_u32(w, type);
    fg_put_u32(w, rank);
    fg_put_u64(w, (uint64_t)(uintptr_t)addr);
    fg_put(w, dim, 8ull * rank);
    if (rank > 1) fg_put(w, stride, 8ull * (rank - 1));
}

static CUresult finish(CUtensorMap *m) {
    CUtensorMap got;
    fgc_expect(got.opaque, sizeof got.opaque);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) memcpy(m->opaque, got.opaque, sizeof got.opaque);
    return r;
}

CUresult fgc_cuTensorMapEncodeTiled(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType, cuuint32_t tensorRank,
                                    void *globalAddress, const cuuint64_t *globalDim, const cuuint64_t *globalStrides,
                                    const cuuint32_t *boxDim, const cuuint32_t *elementStrides,
                                    CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                    CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    FGC_REQUIRE_INIT();
    if (!map_ok(tensorMap) || tensorRank == 0 || tensorRank > MAX_RANK || !globalDim ||
        (tensorRank > 1 && !globalStrides) || !boxDim || !elementStrides)
        return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuTensorMapEncodeTiled);
    if (!w) return fgc_last_error();
    put_head(w, (unsigned)tensorDataType, tensorRank, globalAddress, globalDim, globalStrides);
    fg_put(w, boxDim, 4ull * tensorRank);
    fg_put(w, elementStrides, 4ull * tensorRank);
    fg_put_u32(w, (uint32_t)interleave);
    fg_put_u32(w, (uint32_t)swizzle);
    fg_put_u32(w, (uint32_t)l2Promotion);
    fg_put_u32(w, (uint32_t)oobFill);
    return finish(tensorMap);
}

CUresult fgc_cuTensorMapEncodeIm2col(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                     cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                     const cuuint64_t *globalStrides, const int *pixelBoxLowerCorner,
                                     const int *pixelBoxUpperCorner, cuuint32_t channelsPerPixel,
                                     cuuint32_t pixelsPerColumn, const cuuint32_t *elementStrides,
                                     CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                     CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    FGC_REQUIRE_INIT();
    unsigned corners = tensorRank > 2 ? tensorRank - 2 : 0;
    if (!map_ok(tensorMap) || tensorRank == 0 || tensorRank > MAX_RANK || !globalDim ||
        (tensorRank > 1 && !globalStrides) || (corners && (!pixelBoxLowerCorner || !pixelBoxUpperCorner)) ||
        !elementStrides)
        return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuTensorMapEncodeIm2col);
    if (!w) return fgc_last_error();
    put_head(w, (unsigned)tensorDataType, tensorRank, globalAddress, globalDim, globalStrides);
    if (corners) {
        fg_put(w, pixelBoxLowerCorner, 4ull * corners);
        fg_put(w, pixelBoxUpperCorner, 4ull * corners);
    }
    fg_put_u32(w, channelsPerPixel);
    fg_put_u32(w, pixelsPerColumn);
    fg_put(w, elementStrides, 4ull * tensorRank);
    fg_put_u32(w, (uint32_t)interleave);
    fg_put_u32(w, (uint32_t)swizzle);
    fg_put_u32(w, (uint32_t)l2Promotion);
    fg_put_u32(w, (uint32_t)oobFill);
    return finish(tensorMap);
}

CUresult fgc_cuTensorMapEncodeIm2colWide(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                         cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                         const cuuint64_t *globalStrides, int pixelBoxLowerCornerWidth,
                                         int pixelBoxUpperCornerWidth, cuuint32_t channelsPerPixel,
                                         cuuint32_t pixelsPerColumn, const cuuint32_t *elementStrides,
                                         CUtensorMapInterleave interleave, CUtensorMapIm2ColWideMode mode,
                                         CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                         CUtensorMapFloatOOBfill oobFill) {
    FGC_REQUIRE_INIT();
    if (!map_ok(tensorMap) || tensorRank == 0 || tensorRank > MAX_RANK || !globalDim ||
        (tensorRank > 1 && !globalStrides) || !elementStrides)
        return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuTensorMapEncodeIm2colWide);
    if (!w) return fgc_last_error();
    put_head(w, (unsigned)tensorDataType, tensorRank, globalAddress, globalDim, globalStrides);
    fg_put_u32(w, (uint32_t)pixelBoxLowerCornerWidth);
    fg_put_u32(w, (uint32_t)pixelBoxUpperCornerWidth);
    fg_put_u32(w, channelsPerPixel);
    fg_put_u32(w, pixelsPerColumn);
    fg_put(w, elementStrides, 4ull * tensorRank);
    fg_put_u32(w, (uint32_t)interleave);
    fg_put_u32(w, (uint32_t)mode);
    fg_put_u32(w, (uint32_t)swizzle);
    fg_put_u32(w, (uint32_t)l2Promotion);
    fg_put_u32(w, (uint32_t)oobFill);
    return finish(tensorMap);
}

CUresult fgc_cuTensorMapReplaceAddress(CUtensorMap *tensorMap, void *globalAddress) {
    FGC_REQUIRE_INIT();
    if (!map_ok(tensorMap)) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuTensorMapReplaceAddress);
    if (!w) return fgc_last_error();
    fg_put(w, tensorMap->opaque, sizeof tensorMap->opaque);
    fg_put_u64(w, (uint64_t)(uintptr_t)globalAddress);
    return finish(tensorMap);
}
