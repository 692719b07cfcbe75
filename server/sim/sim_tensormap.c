/* sim_tensormap.c - tensor maps (TMA descriptors) for the simulated device: cuTensorMapEncodeTiled,
 * cuTensorMapEncodeIm2col, cuTensorMapEncodeIm2colWide and cuTensorMapReplaceAddress.
 *
 * The inputs are checked as cuda.h 13.0 documents them (each violation is CUDA_ERROR_INVALID_VALUE): the map's own
 * 64-byte alignment; data type, interleave, swizzle, L2 promotion, OOB fill and im2col-wide mode within their
 * enums; the rank (1..5 tiled, 3..5 im2col, at least 3 with interleave); the global address non-NULL and 16-byte
 * aligned (32 with 32-byte interleave or the 16-byte-aligned packed types); every dimension 1..2^32 (the packed
 * types' first dimension a multiple of 128, or of 2 for 16U4_ALIGN8B); strides multiples of 16 (32 where the
 * address needs 32) below 2^40, the first covering a row; box dimensions 1..256, the inner one a multiple of 16
 * bytes without interleave (128 elements for the 16-byte-aligned packed types); element strides 1..8; 32-byte
 * interleave only with 32-byte swizzle; 16U6 only without interleave; the swizzle span holding the inner box
 * (channels per pixel for im2col); NaN fill only for floating-point types; im2col corner offsets within the range
 * of their rank, channels per pixel 1..256 and pixels per column 1..1024. A current context is required.
 *
 * The encoding is the sim's own, deterministic: every parameter packed into the 128 bytes (the address in the
 * first quadword, a magic in the second), so two encodings of the same inputs are equal byte for byte and
 * cuTensorMapReplaceAddress changes only the address (after checking the map is one of the sim's and the new
 * address meets the map's alignment). A GPU's driver encodes differently and the sim executes no TMA; and unlike
 * a compute capability 9.0 GPU's driver, the sim does not refuse im2col-wide maps (a 10.0 feature). */
#include "sim.h"

#include <string.h>

#define MAGIC 0x314d544d49534746ull /* "FGSIMTM1" */

enum { KIND_TILED = 1, KIND_IM2COL, KIND_WIDE };

struct params {
    int kind;
    unsigned dtype, rank;
    uint64_t addr;
    const cuuint64_t *dim, *stride;
    const cuuint32_t *box, *estride;
    const int *lower, *upper; /* im2col: rank - 2 each */
    int lower_w, upper_w;     /* im2col wide */
    unsigned cpp, ppc;        /* channels per pixel, pixels per column */
    unsigned interleave, swizzle, l2, oob, mode;
};

/* Bits per element of a data type, 0 for none. */
static unsigned elem_bits(unsigned t)
{
    static const unsigned bits[] = { 8, 16, 32, 32, 64, 64, 16, 32, 64, 16, 32, 32, 32, 4, 4, 6 };
    return t < sizeof bits / sizeof bits[0] ? bits[t] : 0;
}

static int is_float(unsigned t) { return t >= CU_TENSOR_MAP_DATA_TYPE_FLOAT16 && t <= CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ; }
static int packed16(unsigned t)
{
    return t == CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN16B || t == CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B;
}

static unsigned addr_align(const struct params *p)
{
    return p->interleave == CU_TENSOR_MAP_INTERLEAVE_32B || packed16(p->dtype) ? 32 : 16;
}

static int valid(const struct params *p)
{
    unsigned bits = elem_bits(p->dtype);
    if (!bits || p->interleave > CU_TENSOR_MAP_INTERLEAVE_32B || p->swizzle > CU_TENSOR_MAP_SWIZZLE_128B_ATOM_64B ||
        p->l2 > CU_TENSOR_MAP_L2_PROMOTION_L2_256B || p->oob > CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA ||
        p->mode > CU_TENSOR_MAP_IM2COL_WIDE_MODE_W128)
        return 0;
    unsigned min_rank = p->kind != KIND_TILED || p->interleave != CU_TENSOR_MAP_INTERLEAVE_NONE ? 3 : 1;
    if (p->rank < min_rank || p->rank > 5 || !p->dim || (p->rank > 1 && !p->stride) || !p->estride)
        return 0;
    if (!p->addr || p->addr % addr_align(p))
        return 0;
    for (unsigned i = 0; i < p->rank; i++)
        if (p->dim[i] == 0 || p->dim[i] > (1ull << 32) || p->estride[i] == 0 || p->estride[i] > 8)
            return 0;
    if ((packed16(p->dtype) && p->dim[0] % 128) || (p->dtype == CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B && p->dim[0] % 2))
        return 0;
    for (unsigned i = 0; i + 1 < p->rank; i++)
        if (p->stride[i] % (addr_align(p) == 32 ? 32 : 16) || p->stride[i] >= (1ull << 40))
            return 0;
    if (p->rank > 1 && p->stride[0] < (p->dim[0] * bits + 7) / 8)
        return 0; /* a row must fit in its stride */
    if (p->interleave == CU_TENSOR_MAP_INTERLEAVE_32B && p->swizzle != CU_TENSOR_MAP_SWIZZLE_32B)
        return 0;
    if (p->dtype == CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B && p->interleave != CU_TENSOR_MAP_INTERLEAVE_NONE)
        return 0;
    if (p->oob && !is_float(p->dtype))
        return 0;
    uint64_t inner; /* bytes of the innermost extent moved per request */
    if (p->kind == KIND_TILED) {
        if (!p->box)
            return 0;
        for (unsigned i = 0; i < p->rank; i++)
            if (p->box[i] == 0 || p->box[i] > 256)
                return 0;
        inner = ((uint64_t)p->box[0] * bits + 7) / 8;
        if (p->interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && inner % 16)
            return 0;
        if (packed16(p->dtype) && p->box[0] != 128)
            return 0;
    } else {
        if (p->cpp == 0 || p->cpp > 256 || (packed16(p->dtype) && p->cpp != 128))
            return 0;
        if ((p->kind == KIND_IM2COL || p->mode == CU_TENSOR_MAP_IM2COL_WIDE_MODE_W) && (p->ppc == 0 || p->ppc > 1024))
            return 0;
        inner = ((uint64_t)p->cpp * bits + 7) / 8;
        if (p->kind == KIND_IM2COL) {
            if (!p->lower || !p->upper)
                return 0;
            int lim = p->rank == 3 ? 32768 : p->rank == 4 ? 128 : 16;
            for (unsigned i = 0; i + 2 < p->rank; i++)
                if (p->lower[i] < -lim || p->lower[i] >= lim || p->upper[i] < -lim || p->upper[i] >= lim)
                    return 0;
        } else if (p->lower_w < -32768 || p->lower_w > 32767 || p->upper_w < -32768 || p->upper_w > 32767) {
            return 0;
        }
    }
    if (p->interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && p->swizzle != CU_TENSOR_MAP_SWIZZLE_NONE) {
        uint64_t span = p->swizzle == CU_TENSOR_MAP_SWIZZLE_32B ? 32 : p->swizzle == CU_TENSOR_MAP_SWIZZLE_64B ? 64 : 128;
        if (inner > span)
            return 0;
    }
    return 1;
}

static void encode(const struct params *p, CUtensorMap *m)
{
    uint64_t *q = m->opaque;
    memset(m, 0, sizeof *m);
    q[0] = p->addr;
    q[1] = MAGIC;
    q[2] = (uint64_t)p->kind | (uint64_t)p->dtype << 8 | (uint64_t)p->rank << 16 | (uint64_t)p->interleave << 24 |
           (uint64_t)p->swizzle << 32 | (uint64_t)p->l2 << 40 | (uint64_t)p->oob << 48 | (uint64_t)p->mode << 56;
    for (unsigned i = 0; i < p->rank; i++) {
        q[3 + i] = p->dim[i];
        q[13] |= (uint64_t)(p->estride[i] - 1) << (4 * i);
    }
    for (unsigned i = 0; i + 1 < p->rank; i++)
        q[8 + i] = p->stride[i];
    if (p->kind == KIND_TILED) {
        for (unsigned i = 0; i < p->rank; i++)
            q[12] |= (uint64_t)(p->box[i] - 1) << (8 * i);
    } else {
        q[12] = (uint64_t)p->cpp | (uint64_t)p->ppc << 16;
        if (p->kind == KIND_IM2COL) {
            for (unsigned i = 0; i + 2 < p->rank; i++) {
                q[14] |= (uint64_t)(uint16_t)p->lower[i] << (16 * i);
                q[15] |= (uint64_t)(uint16_t)p->upper[i] << (16 * i);
            }
        } else {
            q[14] = (uint16_t)p->lower_w;
            q[15] = (uint16_t)p->upper_w;
        }
    }
}

static CUresult make(CUtensorMap *m, const struct params *p)
{
    if (!m || (uintptr_t)m % 64)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *ctx = NULL;
    CUresult rc = sim_current_ctx(&ctx);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!valid(p))
        return CUDA_ERROR_INVALID_VALUE;
    encode(p, m);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuTensorMapEncodeTiled(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                        cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                        const cuuint64_t *globalStrides, const cuuint32_t *boxDim,
                                        const cuuint32_t *elementStrides, CUtensorMapInterleave interleave,
                                        CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                        CUtensorMapFloatOOBfill oobFill)
{
    struct params p = { .kind = KIND_TILED, .dtype = tensorDataType, .rank = tensorRank,
                        .addr = (uint64_t)(uintptr_t)globalAddress, .dim = globalDim, .stride = globalStrides,
                        .box = boxDim, .estride = elementStrides, .interleave = interleave, .swizzle = swizzle,
                        .l2 = l2Promotion, .oob = oobFill };
    return make(tensorMap, &p);
}

SIM_API CUresult cuTensorMapEncodeIm2col(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                         cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                         const cuuint64_t *globalStrides, const int *pixelBoxLowerCorner,
                                         const int *pixelBoxUpperCorner, cuuint32_t channelsPerPixel,
                                         cuuint32_t pixelsPerColumn, const cuuint32_t *elementStrides,
                                         CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                         CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill)
{
    struct params p = { .kind = KIND_IM2COL, .dtype = tensorDataType, .rank = tensorRank,
                        .addr = (uint64_t)(uintptr_t)globalAddress, .dim = globalDim, .stride = globalStrides,
                        .lower = pixelBoxLowerCorner, .upper = pixelBoxUpperCorner, .cpp = channelsPerPixel,
                        .ppc = pixelsPerColumn, .estride = elementStrides, .interleave = interleave,
                        .swizzle = swizzle, .l2 = l2Promotion, .oob = oobFill };
    return make(tensorMap, &p);
}

SIM_API CUresult cuTensorMapEncodeIm2colWide(CUtensorMap *tensorMap, CUtensorMapDataType tensorDataType,
                                             cuuint32_t tensorRank, void *globalAddress, const cuuint64_t *globalDim,
                                             const cuuint64_t *globalStrides, int pixelBoxLowerCornerWidth,
                                             int pixelBoxUpperCornerWidth, cuuint32_t channelsPerPixel,
                                             cuuint32_t pixelsPerColumn, const cuuint32_t *elementStrides,
                                             CUtensorMapInterleave interleave, CUtensorMapIm2ColWideMode mode,
                                             CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                             CUtensorMapFloatOOBfill oobFill)
{
    struct params p = { .kind = KIND_WIDE, .dtype = tensorDataType, .rank = tensorRank,
                        .addr = (uint64_t)(uintptr_t)globalAddress, .dim = globalDim, .stride = globalStrides,
                        .lower_w = pixelBoxLowerCornerWidth, .upper_w = pixelBoxUpperCornerWidth,
                        .cpp = channelsPerPixel, .ppc = pixelsPerColumn, .estride = elementStrides,
                        .interleave = interleave, .mode = mode, .swizzle = swizzle, .l2 = l2Promotion, .oob = oobFill };
    return make(tensorMap, &p);
}

SIM_API CUresult cuTensorMapReplaceAddress(CUtensorMap *tensorMap, void *globalAddress)
{
    if (!tensorMap || (uintptr_t)tensorMap % 64)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *ctx = NULL;
    CUresult rc = sim_current_ctx(&ctx);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    uint64_t *q = tensorMap->opaque;
    struct params p;
    memset(&p, 0, sizeof p);
    p.dtype = (unsigned)(q[2] >> 8) & 0xff;
    p.interleave = (unsigned)(q[2] >> 24) & 0xff;
    uint64_t a = (uint64_t)(uintptr_t)globalAddress;
    if (q[1] != MAGIC || !a || a % addr_align(&p))
        return CUDA_ERROR_INVALID_VALUE;
    q[0] = a;
    return CUDA_SUCCESS;
}
