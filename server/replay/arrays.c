/* arrays.c — CUDA arrays, 3D copies, texture and surface objects for one session.
 *
 * Arrays are counted against the lease's quota when created (their element bytes; the driver's padding is not
 * known) and given back when destroyed. They are not in S->allocs, so paging leaves them on the device and a
 * session holding one cannot be parked. 3D copies arrive with host memory already packed by the stub: a source
 * is the record's bytes (rows of WidthInBytes, no gaps), a destination is the reply's; device sides must lie in
 * the session's own allocations, array sides name the session's arrays. The async form is replayed on its stream
 * and waited for, since the bytes travel with the record and its reply. Texture and surface objects name arrays
 * or the session's device memory; the object value is the driver's (kernels receive it). */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_ARRAYS 65536

typedef struct {
    CUarray a;               /* or, with mip set, the CUmipmappedArray */
    uint64_t bytes;
    int dev;                 /* the GPU it is charged on (the current context's when it was made) */
    int mip;
    uint64_t levels[32];     /* the level ids handed out (mipmapped), or the plane ids (cuArrayGetPlane): they end
                              * with it */
} charged_array;

static charged_array *g_arrays; /* one worker process serves one session */
static size_t g_n, g_cap;

static unsigned format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    case CU_AD_FORMAT_UNSIGNED_INT32:
    case CU_AD_FORMAT_SIGNED_INT32:
    case CU_AD_FORMAT_FLOAT:
        return 4;
    default:
        return 0;
    }
}

static CUresult created(fgs_session *S, CUresult res, CUarray a, uint64_t bytes, fg_writer *out) {
    if (res != CUDA_SUCCESS) {
        fgs_uncharge(S, bytes);
        return res;
    }
    memset(&g_arrays[g_n], 0, sizeof g_arrays[0]);
    g_arrays[g_n].a = a;
    g_arrays[g_n].bytes = bytes;
    g_arrays[g_n].dev = fgs_current_device(S);
    g_n++;
    fg_put_u64(out, fgs_handle_add(S, FGH_ARRAY, a));
    return CUDA_SUCCESS;
}

static CUresult room(void) {
    if (g_n < g_cap) return CUDA_SUCCESS;
    if (g_cap >= MAX_ARRAYS) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t cap = g_cap ? g_cap * 2 : 32;
    charged_array *na = (charged_array *)realloc(g_arrays, cap * sizeof *na);
    if (!na) return CUDA_ERROR_OUT_OF_MEMORY;
    g_arrays = na;
    g_cap = cap;
    return CUDA_SUCCESS;
}

/* Element bytes of an array, or 0 when the description is not one (the driver then says why). */
static uint64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch) {
    uint64_t e = (uint64_t)format_bytes(f) * ch;
    h = h ? h : 1;
    d = d ? d : 1;
    if (!e || w > (1ull << 20) || h > (1ull << 20) || d > (1ull << 20)) return 0;
    return e * w * h * d;
}

CUresult fgs_cuArrayCreate_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUDA_ARRAY_DESCRIPTOR d;
    fg_get(r, &d, sizeof d);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    uint64_t bytes = array_bytes(d.Width, d.Height, 1, d.Format, d.NumChannels);
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    CUresult res = room();
    if (res == CUDA_SUCCESS) res = fgs_charge(S, bytes);
    if (res != CUDA_SUCCESS) return res;
    CUarray a = NULL;
    res = S->api->cuArrayCreate_v2(&a, &d);
    return created(S, res, a, bytes, out);
}

CUresult fgs_cuArray3DCreate_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUDA_ARRAY3D_DESCRIPTOR d;
    fg_get(r, &d, sizeof d);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    uint64_t bytes = array_bytes(d.Width, d.Height, d.Depth, d.Format, d.NumChannels);
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    CUresult res = room();
    if (res == CUDA_SUCCESS) res = fgs_charge(S, bytes);
    if (res != CUDA_SUCCESS) return res;
    CUarray a = NULL;
    res = S->api->cuArray3DCreate_v2(&a, &d);
    return created(S, res, a, bytes, out);
}

CUresult fgs_cuArrayDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *a;
    if (fgs_handle_get(S, FGH_ARRAY, id, &a) || !a) return CUDA_ERROR_INVALID_HANDLE;
    size_t i = 0;
    while (i < g_n && (g_arrays[i].mip || g_arrays[i].a != (CUarray)a)) i++;
    if (i == g_n) return CUDA_ERROR_INVALID_HANDLE; /* not one this session created (a mipmap level, say) */
    CUresult res = S->api->cuArrayDestroy((CUarray)a);
    if (res != CUDA_SUCCESS) return res;
    for (int l = 0; l < 32; l++)
        if (g_arrays[i].levels[l]) fgs_handle_remove(S, FGH_ARRAY, g_arrays[i].levels[l]);
    fgs_uncharge_dev(S, g_arrays[i].dev, g_arrays[i].bytes);
    g_arrays[i] = g_arrays[--g_n];
    fgs_handle_remove(S, FGH_ARRAY, id);
    return CUDA_SUCCESS;
}

/* One side of a 3D copy as the wire gives it: device (checked against the session), array (translated) or
 * packed host memory (host_n bytes at host). */
static CUresult side(fgs_session *S, CUmemorytype *type, CUdeviceptr dev, CUarray *arr, size_t x, size_t y, size_t z,
                     size_t pitch, size_t height, const CUDA_MEMCPY3D *c) {
    if (*type == CU_MEMORYTYPE_ARRAY) {
        void *a;
        if (fgs_handle_get(S, FGH_ARRAY, (uint64_t)(uintptr_t)*arr, &a) || !a) return CUDA_ERROR_INVALID_HANDLE;
        *arr = (CUarray)a;
        return CUDA_SUCCESS;
    }
    if (*type != CU_MEMORYTYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    size_t w = c->WidthInBytes, h = c->Height ? c->Height : 1, d = c->Depth ? c->Depth : 1;
    if (!pitch) pitch = w;
    if (!height) height = h;
    if (pitch < w || height < h || pitch > (1ull << 40) || height > (1ull << 24) || d > (1ull << 24)) return CUDA_ERROR_INVALID_VALUE;
    uint64_t rows_before, first, last_row, end;
    if (__builtin_mul_overflow((uint64_t)z, (uint64_t)height, &rows_before) ||
        __builtin_add_overflow(rows_before, (uint64_t)y, &rows_before) ||
        __builtin_mul_overflow(rows_before, (uint64_t)pitch, &first) || __builtin_add_overflow(first, (uint64_t)x, &first) ||
        __builtin_mul_overflow((uint64_t)(z + d - 1), (uint64_t)height, &last_row) ||
        __builtin_add_overflow(last_row, (uint64_t)(y + h - 1), &last_row) ||
        __builtin_mul_overflow(last_row, (uint64_t)pitch, &end) || __builtin_add_overflow(end, (uint64_t)(x + w), &end) ||
        __builtin_add_overflow((uint64_t)dev, first, &rows_before))
        return CUDA_ERROR_INVALID_VALUE;
    return fgs_device_range_ok(S, dev + first, end - first) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* u8 host_src, u8 host_dst, CUDA_MEMCPY3D (array ids), u64 stream id (0 for the sync form), [u64 n + bytes] */
static CUresult copy3d(fgs_session *S, fg_reader *r, fg_writer *out, int async) {
    uint8_t hs = 0, hd = 0;
    fg_get(r, &hs, 1);
    fg_get(r, &hd, 1);
    CUDA_MEMCPY3D c;
    fg_get(r, &c, sizeof c);
    uint64_t sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    uint64_t h = c.Height ? c.Height : 1, d = c.Depth ? c.Depth : 1;
    if (c.WidthInBytes > FG_CHUNK || h > FG_CHUNK || d > FG_CHUNK) return FGS_PROTOCOL_ERROR;
    uint64_t packed = c.WidthInBytes * h * d;
    const uint8_t *src_bytes = NULL;
    if (hs) {
        uint64_t n = fg_get_u64(r);
        src_bytes = fg_take(r, (size_t)n);
        if (r->failed || n != packed) return FGS_PROTOCOL_ERROR;
    }
    if (hd && packed > FG_CHUNK) return FGS_PROTOCOL_ERROR;
    CUresult res = CUDA_SUCCESS;
    if (hs) {
        c.srcMemoryType = CU_MEMORYTYPE_HOST;
        c.srcHost = src_bytes;
        c.srcXInBytes = c.srcY = c.srcZ = 0;
        c.srcPitch = c.WidthInBytes;
        c.srcHeight = h;
    } else {
        res = side(S, &c.srcMemoryType, c.srcDevice, &c.srcArray, c.srcXInBytes, c.srcY, c.srcZ, c.srcPitch,
                   c.srcHeight, &c);
        c.srcHost = NULL;
    }
    if (res == CUDA_SUCCESS && !hd)
        res = side(S, &c.dstMemoryType, c.dstDevice, &c.dstArray, c.dstXInBytes, c.dstY, c.dstZ, c.dstPitch,
                   c.dstHeight, &c);
    void *s = NULL;
    if (res == CUDA_SUCCESS && async && fgs_handle_get(S, FGH_STREAM, sid, &s)) res = CUDA_ERROR_INVALID_HANDLE;
    if (res != CUDA_SUCCESS) return res;
    void *dst = NULL;
    if (hd) {
        dst = fgs_scratch(S, packed ? (size_t)packed : 1);
        if (!dst) return CUDA_ERROR_OUT_OF_MEMORY;
        c.dstMemoryType = CU_MEMORYTYPE_HOST;
        c.dstHost = dst;
        c.dstXInBytes = c.dstY = c.dstZ = 0;
        c.dstPitch = c.WidthInBytes;
        c.dstHeight = h;
    } else {
        c.dstHost = NULL;
    }
    c.reserved0 = c.reserved1 = NULL;
    if (async) {
        res = S->api->cuMemcpy3DAsync_v2(&c, (CUstream)s);
        /* Host bytes travel now; a copy between device memory and arrays stays in stream order (it may be captured:
         * the stub's copies through device shadows, client_stub/capture_copies.c). */
        if (res == CUDA_SUCCESS && (hs || hd)) res = S->api->cuStreamSynchronize((CUstream)s);
    } else {
        res = S->api->cuMemcpy3D_v2(&c);
    }
    if (res == CUDA_SUCCESS && hd) fg_put(out, dst, (size_t)packed);
    return res;
}

CUresult fgs_cuMemcpy3D_v2(fgs_session *S, fg_reader *r, fg_writer *out) { return copy3d(S, r, out, 0); }
CUresult fgs_cuMemcpy3DAsync_v2(fgs_session *S, fg_reader *r, fg_writer *out) { return copy3d(S, r, out, 1); }

/* A resource description from the client: arrays by id, device memory checked against the session. */
static CUresult resource(fgs_session *S, CUDA_RESOURCE_DESC *rd) {
    void *a;
    switch (rd->resType) {
    case CU_RESOURCE_TYPE_ARRAY:
        if (fgs_handle_get(S, FGH_ARRAY, (uint64_t)(uintptr_t)rd->res.array.hArray, &a) || !a)
            return CUDA_ERROR_INVALID_HANDLE;
        rd->res.array.hArray = (CUarray)a;
        return CUDA_SUCCESS;
    case CU_RESOURCE_TYPE_LINEAR:
        return rd->res.linear.sizeInBytes && fgs_device_range_ok(S, rd->res.linear.devPtr, rd->res.linear.sizeInBytes)
                   ? CUDA_SUCCESS
                   : CUDA_ERROR_INVALID_VALUE;
    case CU_RESOURCE_TYPE_PITCH2D: {
        uint64_t n = (uint64_t)rd->res.pitch2D.pitchInBytes * rd->res.pitch2D.height;
        return n && rd->res.pitch2D.height < (1u << 24) && fgs_device_range_ok(S, rd->res.pitch2D.devPtr, n)
                   ? CUDA_SUCCESS
                   : CUDA_ERROR_INVALID_VALUE;
    }
    case CU_RESOURCE_TYPE_MIPMAPPED_ARRAY:
        if (fgs_handle_get(S, FGH_MIPMAPPEDARRAY, (uint64_t)(uintptr_t)rd->res.mipmap.hMipmappedArray, &a) || !a)
            return CUDA_ERROR_INVALID_HANDLE;
        rd->res.mipmap.hMipmappedArray = (CUmipmappedArray)a;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult fgs_cuTexObjectCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUDA_RESOURCE_DESC rd;
    CUDA_TEXTURE_DESC td;
    CUDA_RESOURCE_VIEW_DESC vd;
    uint8_t has_view = 0;
    fg_get(r, &rd, sizeof rd);
    fg_get(r, &td, sizeof td);
    fg_get(r, &has_view, 1);
    if (has_view) fg_get(r, &vd, sizeof vd);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = resource(S, &rd);
    if (res != CUDA_SUCCESS) return res;
    CUtexObject t = 0;
    res = S->api->cuTexObjectCreate(&t, &rd, &td, has_view ? &vd : NULL);
    if (res == CUDA_SUCCESS) fg_put_u64(out, t);
    return res;
}

/* Texture and surface objects are the driver's own values, handed to the client and passed by it into kernels:
 * a worker rebuilt for a parked session cannot promise the same values, so while any is alive the session is not
 * parked (park.c). A destroy the driver accepted named a live object. */
void fgs_texsurf_note(fgs_session *S, unsigned op, CUresult res) {
    if (res != CUDA_SUCCESS) return;
    if (op == FG_OP_cuTexObjectCreate || op == FG_OP_cuSurfObjectCreate) S->n_texsurf++;
    else if ((op == FG_OP_cuTexObjectDestroy || op == FG_OP_cuSurfObjectDestroy) && S->n_texsurf) S->n_texsurf--;
}

CUresult fgs_cuSurfObjectCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUDA_RESOURCE_DESC rd;
    fg_get(r, &rd, sizeof rd);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (rd.resType != CU_RESOURCE_TYPE_ARRAY) return CUDA_ERROR_INVALID_VALUE;
    CUresult res = resource(S, &rd);
    if (res != CUDA_SUCCESS) return res;
    CUsurfObject so = 0;
    res = S->api->cuSurfObjectCreate(&so, &rd);
    if (res == CUDA_SUCCESS) fg_put_u64(out, so);
    return res;
}

/* cuTexObjectGetResourceDesc / cuSurfObjectGetResourceDesc: u64 object; the reply: the driver's description with
 * its array or mipmapped array as the session's id (0 for one the session no longer holds). */
static CUresult get_resource(fgs_session *S, fg_reader *r, fg_writer *out, int surface) {
    uint64_t obj = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUDA_RESOURCE_DESC rd;
    memset(&rd, 0, sizeof rd);
    if (surface && !S->api->cuSurfObjectGetResourceDesc) return fgs_missing(S, "cuSurfObjectGetResourceDesc");
    if (!surface && !S->api->cuTexObjectGetResourceDesc) return fgs_missing(S, "cuTexObjectGetResourceDesc");
    CUresult res = surface ? S->api->cuSurfObjectGetResourceDesc(&rd, (CUsurfObject)obj)
                           : S->api->cuTexObjectGetResourceDesc(&rd, (CUtexObject)obj);
    if (res != CUDA_SUCCESS) return res;
    if (rd.resType == CU_RESOURCE_TYPE_ARRAY)
        rd.res.array.hArray = (CUarray)(uintptr_t)fgs_handle_id_of(S, FGH_ARRAY, rd.res.array.hArray);
    else if (rd.resType == CU_RESOURCE_TYPE_MIPMAPPED_ARRAY)
        rd.res.mipmap.hMipmappedArray =
            (CUmipmappedArray)(uintptr_t)fgs_handle_id_of(S, FGH_MIPMAPPEDARRAY, rd.res.mipmap.hMipmappedArray);
    fg_put(out, &rd, sizeof rd);
    return CUDA_SUCCESS;
}

CUresult fgs_cuTexObjectGetResourceDesc(fgs_session *S, fg_reader *r, fg_writer *out) {
    return get_resource(S, r, out, 0);
}

CUresult fgs_cuSurfObjectGetResourceDesc(fgs_session *S, fg_reader *r, fg_writer *out) {
    return get_resource(S, r, out, 1);
}

/* cuArrayGetPlane: u64 array, u32 plane; the reply: the plane's id, which ends with its array. Only arrays this
 * session created have planes to give (a multi-planar format); the driver says what else is wrong. */
CUresult fgs_cuArrayGetPlane(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    uint32_t plane = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *a;
    if (fgs_handle_get(S, FGH_ARRAY, id, &a) || !a) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuArrayGetPlane) return fgs_missing(S, "cuArrayGetPlane");
    CUarray p = NULL;
    CUresult res = S->api->cuArrayGetPlane(&p, (CUarray)a, plane);
    if (res != CUDA_SUCCESS) return res;
    size_t i = 0;
    while (i < g_n && (g_arrays[i].mip || g_arrays[i].a != (CUarray)a)) i++;
    if (i == g_n || plane >= 32) return CUDA_ERROR_NOT_SUPPORTED; /* a level's planes: not tracked */
    void *known = NULL;
    uint64_t *slot = &g_arrays[i].levels[plane];
    if (!*slot || fgs_handle_get(S, FGH_ARRAY, *slot, &known) || known != p) *slot = fgs_handle_add(S, FGH_ARRAY, p);
    fg_put_u64(out, *slot);
    return CUDA_SUCCESS;
}

/* ---- mipmapped arrays: charged for every level; the level arrays handed out end with them ---- */

CUresult fgs_cuMipmappedArrayCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUDA_ARRAY3D_DESCRIPTOR d;
    fg_get(r, &d, sizeof d);
    uint32_t levels = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!levels || levels > 32) return CUDA_ERROR_INVALID_VALUE;
    uint64_t bytes = 0;
    for (uint32_t l = 0; l < levels; l++) {
        size_t w = d.Width >> l, h = d.Height >> l, z = d.Depth >> l;
        uint64_t b = array_bytes(w ? w : 1, d.Height ? (h ? h : 1) : 0, d.Depth ? (z ? z : 1) : 0, d.Format,
                                 d.NumChannels);
        if (!b) return CUDA_ERROR_INVALID_VALUE;
        bytes += b;
    }
    CUresult res = room();
    if (res == CUDA_SUCCESS) res = fgs_charge(S, bytes);
    if (res != CUDA_SUCCESS) return res;
    CUmipmappedArray m = NULL;
    res = S->api->cuMipmappedArrayCreate(&m, &d, levels);
    if (res != CUDA_SUCCESS) {
        fgs_uncharge(S, bytes);
        return res;
    }
    memset(&g_arrays[g_n], 0, sizeof g_arrays[0]);
    g_arrays[g_n].a = (CUarray)m;
    g_arrays[g_n].bytes = bytes;
    g_arrays[g_n].dev = fgs_current_device(S);
    g_arrays[g_n].mip = 1;
    g_n++;
    fg_put_u64(out, fgs_handle_add(S, FGH_MIPMAPPEDARRAY, m));
    return CUDA_SUCCESS;
}

static charged_array *find_mip(void *m) {
    for (size_t i = 0; i < g_n; i++)
        if (g_arrays[i].mip && g_arrays[i].a == (CUarray)m) return &g_arrays[i];
    return NULL;
}

CUresult fgs_cuMipmappedArrayGetLevel(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    uint32_t level = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *m;
    if (fgs_handle_get(S, FGH_MIPMAPPEDARRAY, id, &m) || !m) return CUDA_ERROR_INVALID_HANDLE;
    charged_array *c = find_mip(m);
    if (!c || level >= 32) return CUDA_ERROR_INVALID_VALUE;
    CUarray a = NULL;
    CUresult res = S->api->cuMipmappedArrayGetLevel(&a, (CUmipmappedArray)m, level);
    if (res != CUDA_SUCCESS) return res;
    void *known = NULL;
    if (!c->levels[level] || fgs_handle_get(S, FGH_ARRAY, c->levels[level], &known) || known != a)
        c->levels[level] = fgs_handle_add(S, FGH_ARRAY, a); /* one id per level, as the driver's one array */
    fg_put_u64(out, c->levels[level]);
    return CUDA_SUCCESS;
}

static void mip_free(fgs_session *S, charged_array *c) {
    S->api->cuMipmappedArrayDestroy((CUmipmappedArray)c->a);
    for (int l = 0; l < 32; l++)
        if (c->levels[l]) fgs_handle_remove(S, FGH_ARRAY, c->levels[l]);
}

CUresult fgs_cuMipmappedArrayDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *m;
    if (fgs_handle_get(S, FGH_MIPMAPPEDARRAY, id, &m) || !m) return CUDA_ERROR_INVALID_HANDLE;
    charged_array *c = find_mip(m);
    if (!c) return CUDA_ERROR_INVALID_HANDLE;
    mip_free(S, c);
    fgs_uncharge_dev(S, c->dev, c->bytes);
    *c = g_arrays[--g_n];
    fgs_handle_remove(S, FGH_MIPMAPPEDARRAY, id);
    return CUDA_SUCCESS;
}

/* At the session's end: the arrays it still holds go (their charges end with the session's ledger slot). */
void fgs_arrays_close(fgs_session *S) {
    for (size_t i = 0; i < g_n; i++) {
        if (g_arrays[i].mip) mip_free(S, &g_arrays[i]);
        else S->api->cuArrayDestroy(g_arrays[i].a);
    }
    g_n = 0;
}
