/* tensormap.c — tensor maps (TMA descriptors): cuTensorMapEncodeTiled, cuTensorMapEncodeIm2col,
 * cuTensorMapEncodeIm2colWide and cuTensorMapReplaceAddress, encoded by the node's driver.
 *
 * A tensor map is 128 opaque bytes the driver builds from parameters and a device address; kernels receive it by
 * value. The stub sends the parameters (arrays with as many entries as the rank says), this worker calls the
 * driver on a 64-byte-aligned map of its own and answers with the 128 bytes. The rank is checked (1..5) before
 * any array is read, every array is read through the bounds-checked reader, and the driver checks the values
 * themselves as it does natively (CUDA_ERROR_INVALID_VALUE). The address is the application's device address,
 * passed through like a kernel's pointer argument. Record layouts (little-endian):
 *   tiled   u32 type, u32 rank, u64 address, u64 dim[rank], u64 stride[rank-1], u32 box[rank],
 *           u32 element_stride[rank], u32 interleave, u32 swizzle, u32 l2, u32 oob
 *   im2col  u32 type, u32 rank, u64 address, u64 dim[rank], u64 stride[rank-1], i32 lower[rank-2],
 *           i32 upper[rank-2], u32 channels, u32 pixels, u32 element_stride[rank], u32 interleave, u32 swizzle,
 *           u32 l2, u32 oob
 *   wide    u32 type, u32 rank, u64 address, u64 dim[rank], u64 stride[rank-1], i32 lower_w, i32 upper_w,
 *           u32 channels, u32 pixels, u32 element_stride[rank], u32 interleave, u32 mode, u32 swizzle, u32 l2,
 *           u32 oob
 *   replace u8 map[128], u64 address
 * The reply is the map's 128 bytes. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_RANK 5

typedef struct {
    uint32_t type, rank;
    uint64_t addr;
    cuuint64_t dim[MAX_RANK], stride[MAX_RANK];
    cuuint32_t estride[MAX_RANK];
} common;

/* The leading fields; CUDA_ERROR_INVALID_VALUE for a rank the arrays cannot have. */
static CUresult get_head(fg_reader *r, common *c) {
    memset(c, 0, sizeof *c);
    c->type = fg_get_u32(r);
    c->rank = fg_get_u32(r);
    c->addr = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (c->rank == 0 || c->rank > MAX_RANK) return CUDA_ERROR_INVALID_VALUE;
    for (uint32_t i = 0; i < c->rank; i++) c->dim[i] = fg_get_u64(r);
    for (uint32_t i = 0; i + 1 < c->rank; i++) c->stride[i] = fg_get_u64(r);
    return r->failed ? FGS_PROTOCOL_ERROR : CUDA_SUCCESS;
}

static void get_u32s(fg_reader *r, cuuint32_t *v, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) v[i] = fg_get_u32(r);
}

static CUresult answer(CUresult res, const CUtensorMap *m, fg_writer *out) {
    if (res == CUDA_SUCCESS) fg_put(out, m->opaque, sizeof m->opaque);
    return res;
}

CUresult fgs_cuTensorMapEncodeTiled(fgs_session *S, fg_reader *r, fg_writer *out) {
    common c;
    CUresult res = get_head(r, &c);
    if (res != CUDA_SUCCESS) return res;
    cuuint32_t box[MAX_RANK];
    get_u32s(r, box, c.rank);
    get_u32s(r, c.estride, c.rank);
    uint32_t il = fg_get_u32(r), sw = fg_get_u32(r), l2 = fg_get_u32(r), oob = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuTensorMapEncodeTiled) return fgs_missing(S, "cuTensorMapEncodeTiled");
    CUtensorMap m;
    res = S->api->cuTensorMapEncodeTiled(&m, (CUtensorMapDataType)c.type, c.rank, (void *)(uintptr_t)c.addr, c.dim,
                                         c.stride, box, c.estride, (CUtensorMapInterleave)il, (CUtensorMapSwizzle)sw,
                                         (CUtensorMapL2promotion)l2, (CUtensorMapFloatOOBfill)oob);
    return answer(res, &m, out);
}

CUresult fgs_cuTensorMapEncodeIm2col(fgs_session *S, fg_reader *r, fg_writer *out) {
    common c;
    CUresult res = get_head(r, &c);
    if (res != CUDA_SUCCESS) return res;
    int lower[MAX_RANK] = {0}, upper[MAX_RANK] = {0};
    uint32_t corners = c.rank > 2 ? c.rank - 2 : 0;
    for (uint32_t i = 0; i < corners; i++) lower[i] = (int)fg_get_u32(r);
    for (uint32_t i = 0; i < corners; i++) upper[i] = (int)fg_get_u32(r);
    uint32_t cpp = fg_get_u32(r), ppc = fg_get_u32(r);
    get_u32s(r, c.estride, c.rank);
    uint32_t il = fg_get_u32(r), sw = fg_get_u32(r), l2 = fg_get_u32(r), oob = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuTensorMapEncodeIm2col) return fgs_missing(S, "cuTensorMapEncodeIm2col");
    CUtensorMap m;
    res = S->api->cuTensorMapEncodeIm2col(&m, (CUtensorMapDataType)c.type, c.rank, (void *)(uintptr_t)c.addr, c.dim,
                                          c.stride, lower, upper, cpp, ppc, c.estride, (CUtensorMapInterleave)il,
                                          (CUtensorMapSwizzle)sw, (CUtensorMapL2promotion)l2,
                                          (CUtensorMapFloatOOBfill)oob);
    return answer(res, &m, out);
}

CUresult fgs_cuTensorMapEncodeIm2colWide(fgs_session *S, fg_reader *r, fg_writer *out) {
    common c;
    CUresult res = get_head(r, &c);
    if (res != CUDA_SUCCESS) return res;
    int lower = (int)fg_get_u32(r), upper = (int)fg_get_u32(r);
    uint32_t cpp = fg_get_u32(r), ppc = fg_get_u32(r);
    get_u32s(r, c.estride, c.rank);
    uint32_t il = fg_get_u32(r), mode = fg_get_u32(r), sw = fg_get_u32(r), l2 = fg_get_u32(r), oob = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuTensorMapEncodeIm2colWide) return fgs_missing(S, "cuTensorMapEncodeIm2colWide");
    CUtensorMap m;
    res = S->api->cuTensorMapEncodeIm2colWide(&m, (CUtensorMapDataType)c.type, c.rank, (void *)(uintptr_t)c.addr,
                                              c.dim, c.stride, lower, upper, cpp, ppc, c.estride,
                                              (CUtensorMapInterleave)il, (CUtensorMapIm2ColWideMode)mode,
                                              (CUtensorMapSwizzle)sw, (CUtensorMapL2promotion)l2,
                                              (CUtensorMapFloatOOBfill)oob);
    return answer(res, &m, out);
}

CUresult fgs_cuTensorMapReplaceAddress(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUtensorMap m;
    fg_get(r, m.opaque, sizeof m.opaque);
    uint64_t addr = fg_get_u64(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuTensorMapReplaceAddress) return fgs_missing(S, "cuTensorMapReplaceAddress");
    CUresult res = S->api->cuTensorMapReplaceAddress(&m, (void *)(uintptr_t)addr);
    return answer(res, &m, out);
}
