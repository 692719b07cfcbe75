/* sim_array.c - CUDA arrays, 3D copies, texture and surface objects on the simulated device. An array keeps its
 * elements row by row in host memory (width x element size per row, then height rows, then depth slices), charged
 * against device memory. cuMemcpy3D copies row by row between host memory, device memory (every row range-checked)
 * and arrays (every row bounds-checked against the array); cuMemcpy3DPeer[Async] are such copies. Texture and
 * surface objects are numbers naming a checked resource description (with the texture and view descriptions),
 * which the getters give back: the simulated device runs no kernel that samples them. A mipmapped array is one
 * array per level. Sparse and deferred-mapping arrays hold their elements like any other; their layout (64 KiB
 * tiles, the mip tail) and memory requirements are computed from their sizes, and nothing maps memory into them. */
#include "sim.h"

#include <stdlib.h>
#include <string.h>

struct sim_array {
    struct sim_obj h;
    CUDA_ARRAY3D_DESCRIPTOR d;
    size_t elem, row, rows, slices;
    int mip_level; /* a level of a mipmapped array (its sparse properties are the mipmapped array's) */
    unsigned char *data;
};

static size_t format_bytes(CUarray_format f)
{
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

static CUresult create(CUarray *out, const CUDA_ARRAY3D_DESCRIPTOR *d)
{
    size_t e = format_bytes(d->Format) * d->NumChannels;
    if (!out || !e || (d->NumChannels != 1 && d->NumChannels != 2 && d->NumChannels != 4) || !d->Width ||
        d->Width > 65536 || d->Height > 65536 || d->Depth > 4096 || (d->Depth && !d->Height))
        return CUDA_ERROR_INVALID_VALUE;
    struct sim_array *a = calloc(1, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    a->d = *d;
    a->elem = e;
    a->row = d->Width * e;
    a->rows = d->Height ? d->Height : 1;
    a->slices = d->Depth ? d->Depth : 1;
    size_t bytes = a->row * a->rows * a->slices;
    CUresult rc = sim_charge(0, bytes);
    if (rc == CUDA_SUCCESS && !(a->data = calloc(1, bytes)))
        rc = CUDA_ERROR_OUT_OF_MEMORY, sim_uncharge(0, bytes);
    if (rc == CUDA_SUCCESS && sim_reg_add(a) != 0) {
        free(a->data);
        sim_uncharge(0, bytes);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc != CUDA_SUCCESS) {
        free(a);
        return rc;
    }
    a->h.kind = SIM_KIND_ARRAY;
    *out = (CUarray)a;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *p)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
    CUDA_ARRAY3D_DESCRIPTOR d = {p->Width, p->Height, 0, p->Format, p->NumChannels, 0};
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = create(pHandle, &d);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *p)
{
    /* Layered and cube-map arrays are not simulated; surface load/store, gather and the rest change nothing. */
    if (!p || (p->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = create(pHandle, p);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuArrayDestroy(CUarray h)
{
    sim_lock();
    struct sim_array *a = sim_reg_find(h, SIM_KIND_ARRAY);
    if (a) {
        sim_reg_remove(a);
        sim_uncharge(0, a->row * a->rows * a->slices);
        free(a->data);
        free(a);
    }
    sim_unlock();
    return a ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

SIM_API CUresult cuArrayGetDescriptor_v2(CUDA_ARRAY_DESCRIPTOR *out, CUarray h)
{
    sim_lock();
    struct sim_array *a = sim_reg_find(h, SIM_KIND_ARRAY);
    CUresult rc = !a ? CUDA_ERROR_INVALID_HANDLE : !out || a->d.Depth ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS) {
        out->Width = a->d.Width;
        out->Height = a->d.Height;
        out->Format = a->d.Format;
        out->NumChannels = a->d.NumChannels;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuArray3DGetDescriptor_v2(CUDA_ARRAY3D_DESCRIPTOR *out, CUarray h)
{
    sim_lock();
    struct sim_array *a = sim_reg_find(h, SIM_KIND_ARRAY);
    CUresult rc = !a ? CUDA_ERROR_INVALID_HANDLE : !out ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS)
        *out = a->d;
    sim_unlock();
    return rc;
}

/* No simulated format is multi-planar: every plane request is refused, as the driver refuses it for such arrays. */
SIM_API CUresult cuArrayGetPlane(CUarray *pPlaneArray, CUarray hArray, unsigned int planeIdx)
{
    (void)planeIdx;
    sim_lock();
    struct sim_array *a = sim_reg_find(hArray, SIM_KIND_ARRAY);
    sim_unlock();
    if (!a)
        return CUDA_ERROR_INVALID_HANDLE;
    (void)pPlaneArray;
    return CUDA_ERROR_INVALID_VALUE;
}

/* Only an array made for deferred mapping has requirements: its bytes in whole 2 MiB pages (the simulated VMM
 * granularity), aligned to one. */
SIM_API CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements, CUarray array,
                                              CUdevice device)
{
    const size_t page = 2u << 20;
    sim_lock();
    CUresult rc = sim_check_device(device);
    struct sim_array *a = rc == CUDA_SUCCESS ? sim_reg_find(array, SIM_KIND_ARRAY) : NULL;
    if (rc == CUDA_SUCCESS && !a)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && (!memoryRequirements || !(a->d.Flags & CUDA_ARRAY3D_DEFERRED_MAPPING)))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        memset(memoryRequirements, 0, sizeof *memoryRequirements);
        memoryRequirements->size = (a->row * a->rows * a->slices + page - 1) / page * page;
        memoryRequirements->alignment = page;
    }
    sim_unlock();
    return rc;
}

/* The address of row (y, z) of one side, at byte x, checked for w bytes; NULL (and *rc set) when out of bounds. */
static unsigned char *row_of(CUmemorytype t, const void *host, CUdeviceptr dev, CUarray arr, size_t x, size_t y,
                             size_t z, size_t pitch, size_t height, size_t w, int prot, CUresult *rc)
{
    if (t == CU_MEMORYTYPE_UNIFIED)
        t = sim_seg_find((uintptr_t)dev) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST, host = (const void *)(uintptr_t)dev;
    switch (t) {
    case CU_MEMORYTYPE_HOST:
        if (!host) {
            *rc = CUDA_ERROR_INVALID_VALUE;
            return NULL;
        }
        return (unsigned char *)host + (z * height + y) * pitch + x;
    case CU_MEMORYTYPE_DEVICE: {
        CUdeviceptr p = dev + (z * height + y) * pitch + x;
        *rc = sim_range_check(p, w, prot);
        return *rc == CUDA_SUCCESS ? (unsigned char *)(uintptr_t)p : NULL;
    }
    case CU_MEMORYTYPE_ARRAY: {
        struct sim_array *a = sim_reg_find(arr, SIM_KIND_ARRAY);
        if (!a) {
            *rc = CUDA_ERROR_INVALID_HANDLE;
            return NULL;
        }
        if (x > a->row || w > a->row - x || y >= a->rows || z >= a->slices) {
            *rc = CUDA_ERROR_INVALID_VALUE;
            return NULL;
        }
        return a->data + (z * a->rows + y) * a->row + x;
    }
    default:
        *rc = CUDA_ERROR_INVALID_VALUE;
        return NULL;
    }
}

static CUresult copy3d(const CUDA_MEMCPY3D *c, CUstream s, int async)
{
    if (!c)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult cap = CUDA_SUCCESS;
    if (async && sim_capture_copy3d(s, c, &cap))
        return cap; /* a memcpy node of the capture's graph */
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS && async)
        rc = sim_stream_check_op(s);
    size_t w = c->WidthInBytes, h = c->Height, d = c->Depth;
    size_t sp = c->srcPitch ? c->srcPitch : w, sh = c->srcHeight ? c->srcHeight : h;
    size_t dp = c->dstPitch ? c->dstPitch : w, dh = c->dstHeight ? c->dstHeight : h;
    for (size_t z = 0; rc == CUDA_SUCCESS && z < d; z++)
        for (size_t y = 0; rc == CUDA_SUCCESS && y < h; y++) {
            unsigned char *src = row_of(c->srcMemoryType, c->srcHost, c->srcDevice, c->srcArray, c->srcXInBytes,
                                        c->srcY + y, c->srcZ + z, sp, sh, w, SIM_PROT_R, &rc);
            unsigned char *dst = src ? row_of(c->dstMemoryType, c->dstHost, c->dstDevice, c->dstArray, c->dstXInBytes,
                                              c->dstY + y, c->dstZ + z, dp, dh, w, SIM_PROT_W, &rc)
                                     : NULL;
            if (src && dst)
                memmove(dst, src, w);
        }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemcpy3D_v2(const CUDA_MEMCPY3D *c) { return copy3d(c, NULL, 0); }
SIM_API CUresult cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D *c, CUstream s) { return copy3d(c, s, 1); }

/* A 3D peer copy is a 3D copy: every device's memory is in one address space here (the contexts are not checked). */
static CUresult copy3d_peer(const CUDA_MEMCPY3D_PEER *p, CUstream s, int async)
{
    if (!p)
        return CUDA_ERROR_INVALID_VALUE;
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
    return copy3d(&c, s, async);
}

SIM_API CUresult cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER *p) { return copy3d_peer(p, NULL, 0); }
SIM_API CUresult cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER *p, CUstream s) { return copy3d_peer(p, s, 1); }

struct sim_mip;
static struct sim_mip *find_mip(CUmipmappedArray h);

/* ---- texture and surface objects: checked descriptions under a number, kept for the getters ---- */

struct sim_texobj {
    unsigned long long v;
    int surface;
    CUDA_RESOURCE_DESC res;
    CUDA_TEXTURE_DESC tex;
    CUDA_RESOURCE_VIEW_DESC view;
    int has_view;
};

static unsigned long long g_next_obj = 1;
static struct sim_texobj g_live[4096];
static size_t g_nlive;

static CUresult check_resource(const CUDA_RESOURCE_DESC *r)
{
    switch (r->resType) {
    case CU_RESOURCE_TYPE_ARRAY: return sim_reg_find(r->res.array.hArray, SIM_KIND_ARRAY) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    case CU_RESOURCE_TYPE_MIPMAPPED_ARRAY: return find_mip(r->res.mipmap.hMipmappedArray) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
    case CU_RESOURCE_TYPE_LINEAR: return sim_range_check(r->res.linear.devPtr, r->res.linear.sizeInBytes, SIM_PROT_R);
    case CU_RESOURCE_TYPE_PITCH2D:
        return sim_range_check(r->res.pitch2D.devPtr, r->res.pitch2D.pitchInBytes * r->res.pitch2D.height, SIM_PROT_R);
    default: return CUDA_ERROR_NOT_SUPPORTED;
    }
}

static CUresult make(unsigned long long *out, const CUDA_RESOURCE_DESC *r, const CUDA_TEXTURE_DESC *t,
                     const CUDA_RESOURCE_VIEW_DESC *v, int surface)
{
    if (!out || !r || (surface && r->resType != CU_RESOURCE_TYPE_ARRAY))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = check_resource(r);
    if (rc == CUDA_SUCCESS && g_nlive == sizeof g_live / sizeof g_live[0])
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        struct sim_texobj *o = &g_live[g_nlive++];
        memset(o, 0, sizeof *o);
        o->v = *out = g_next_obj++;
        o->surface = surface;
        o->res = *r;
        if (t)
            o->tex = *t;
        if (v)
            o->view = *v;
        o->has_view = v != NULL;
    }
    sim_unlock();
    return rc;
}

/* With the global lock held: the live object v (of the kind asked), or NULL. */
static struct sim_texobj *find_obj(unsigned long long v, int surface)
{
    for (size_t i = 0; i < g_nlive; i++)
        if (g_live[i].v == v)
            return g_live[i].surface == surface ? &g_live[i] : NULL;
    return NULL;
}

static CUresult drop(unsigned long long v)
{
    sim_lock();
    size_t i = 0;
    while (i < g_nlive && g_live[i].v != v)
        i++;
    CUresult rc = i < g_nlive ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        g_live[i] = g_live[--g_nlive];
    sim_unlock();
    return rc;
}

/* What an object was made with: 0 the resource, 1 the texture, 2 the resource view description. */
static CUresult describe(void *out, unsigned long long v, int surface, int what)
{
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_texobj *o = find_obj(v, surface);
    CUresult rc = !o || (what == 2 && !o->has_view) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS && what == 0)
        memcpy(out, &o->res, sizeof o->res);
    else if (rc == CUDA_SUCCESS && what == 1)
        memcpy(out, &o->tex, sizeof o->tex);
    else if (rc == CUDA_SUCCESS)
        memcpy(out, &o->view, sizeof o->view);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuTexObjectCreate(CUtexObject *p, const CUDA_RESOURCE_DESC *r, const CUDA_TEXTURE_DESC *t,
                                   const CUDA_RESOURCE_VIEW_DESC *v)
{
    return t ? make(p, r, t, v, 0) : CUDA_ERROR_INVALID_VALUE;
}
SIM_API CUresult cuTexObjectDestroy(CUtexObject t) { return drop(t); }
SIM_API CUresult cuSurfObjectCreate(CUsurfObject *p, const CUDA_RESOURCE_DESC *r) { return make(p, r, NULL, NULL, 1); }
SIM_API CUresult cuSurfObjectDestroy(CUsurfObject s) { return drop(s); }
SIM_API CUresult cuTexObjectGetResourceDesc(CUDA_RESOURCE_DESC *p, CUtexObject t) { return describe(p, t, 0, 0); }
SIM_API CUresult cuTexObjectGetTextureDesc(CUDA_TEXTURE_DESC *p, CUtexObject t) { return describe(p, t, 0, 1); }
SIM_API CUresult cuTexObjectGetResourceViewDesc(CUDA_RESOURCE_VIEW_DESC *p, CUtexObject t)
{
    return describe(p, t, 0, 2);
}
SIM_API CUresult cuSurfObjectGetResourceDesc(CUDA_RESOURCE_DESC *p, CUsurfObject s) { return describe(p, s, 1, 0); }

/* ---- mipmapped arrays: one simulated array per level, each half the size of the one before (at least 1) ---- */

#define SIM_KIND_MIP_MAGIC 0x4d495050u
struct sim_mip {
    uint32_t magic;
    unsigned levels;
    CUarray level[32];
};
static struct sim_mip *g_mips[1024];

static struct sim_mip *find_mip(CUmipmappedArray h)
{
    for (size_t i = 0; i < sizeof g_mips / sizeof g_mips[0]; i++)
        if (g_mips[i] && (void *)g_mips[i] == (void *)h)
            return g_mips[i];
    return NULL;
}

SIM_API CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *p, unsigned int levels)
{
    if (!pHandle || !p || !levels || levels > 32 || (p->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    size_t slot = 0;
    while (slot < sizeof g_mips / sizeof g_mips[0] && g_mips[slot])
        slot++;
    struct sim_mip *m = rc == CUDA_SUCCESS && slot < sizeof g_mips / sizeof g_mips[0] ? calloc(1, sizeof *m) : NULL;
    if (rc == CUDA_SUCCESS && !m)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    for (unsigned l = 0; rc == CUDA_SUCCESS && l < levels; l++) {
        CUDA_ARRAY3D_DESCRIPTOR d = *p;
        d.Width = p->Width >> l ? p->Width >> l : 1;
        d.Height = p->Height ? (p->Height >> l ? p->Height >> l : 1) : 0;
        d.Depth = p->Depth ? (p->Depth >> l ? p->Depth >> l : 1) : 0;
        rc = create(&m->level[l], &d);
        if (rc == CUDA_SUCCESS) {
            ((struct sim_array *)m->level[l])->mip_level = 1;
            m->levels = l + 1;
        }
    }
    if (rc != CUDA_SUCCESS && m) {
        sim_unlock();
        for (unsigned l = 0; l < m->levels; l++)
            cuArrayDestroy(m->level[l]);
        free(m);
        return rc;
    }
    if (rc == CUDA_SUCCESS) {
        m->magic = SIM_KIND_MIP_MAGIC;
        g_mips[slot] = m;
        *pHandle = (CUmipmappedArray)m;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMipmappedArrayGetLevel(CUarray *pLevelArray, CUmipmappedArray h, unsigned int level)
{
    sim_lock();
    struct sim_mip *m = find_mip(h);
    CUresult rc = !m ? CUDA_ERROR_INVALID_HANDLE : !pLevelArray || level >= m->levels ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS)
        *pLevelArray = m->level[level];
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMipmappedArrayDestroy(CUmipmappedArray h)
{
    sim_lock();
    struct sim_mip *m = find_mip(h);
    if (m)
        for (size_t i = 0; i < sizeof g_mips / sizeof g_mips[0]; i++)
            if (g_mips[i] == m)
                g_mips[i] = NULL;
    sim_unlock();
    if (!m)
        return CUDA_ERROR_INVALID_HANDLE;
    for (unsigned l = 0; l < m->levels; l++)
        cuArrayDestroy(m->level[l]);
    free(m);
    return CUDA_SUCCESS;
}

/* ---- sparse layout and deferred-mapping requirements ---- */

/* A sparse tile is 64 KiB of elements: 2D (and 1D) tiles are near-square, 3D ones near-cubic, as the driver's
 * standard tile shapes are for each element size. */
#define SIM_TILE_BYTES (64u << 10)
static void tile_of(const struct sim_array *a, unsigned *w, unsigned *h, unsigned *d)
{
    unsigned lg = 0;
    while ((1u << lg) < a->elem)
        lg++;
    unsigned texels = 16 - lg; /* log2 of the elements a tile holds */
    if (a->d.Depth) {
        *d = 1u << (texels / 3);
        *h = 1u << ((texels - texels / 3) / 2);
        *w = 1u << (texels - texels / 3 - (texels - texels / 3) / 2);
    } else {
        *d = 1;
        *h = 1u << (texels / 2);
        *w = 1u << (texels - texels / 2);
    }
}

static void sparse_props(CUDA_ARRAY_SPARSE_PROPERTIES *p, const struct sim_array *a)
{
    memset(p, 0, sizeof *p);
    tile_of(a, &p->tileExtent.width, &p->tileExtent.height, &p->tileExtent.depth);
}

/* A plain sparse array has no mip tail (and no layers, so no single mip tail): tile extents only. A level of a
 * mipmapped array is refused, as the driver refuses it: its mipmapped array has the properties. */
SIM_API CUresult cuArrayGetSparseProperties(CUDA_ARRAY_SPARSE_PROPERTIES *sparseProperties, CUarray array)
{
    sim_lock();
    struct sim_array *a = sim_reg_find(array, SIM_KIND_ARRAY);
    CUresult rc = !a ? CUDA_ERROR_INVALID_HANDLE
                  : !sparseProperties || a->mip_level || !(a->d.Flags & CUDA_ARRAY3D_SPARSE) ? CUDA_ERROR_INVALID_VALUE
                                                                                            : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS)
        sparse_props(sparseProperties, a);
    sim_unlock();
    return rc;
}

/* The mip tail starts at the first level smaller than a tile in any dimension and holds the bytes of every level
 * from there, in whole tiles; without such a level there is no tail (size 0, first level = the level count). */
SIM_API CUresult cuMipmappedArrayGetSparseProperties(CUDA_ARRAY_SPARSE_PROPERTIES *sparseProperties,
                                                     CUmipmappedArray mipmap)
{
    sim_lock();
    struct sim_mip *m = find_mip(mipmap);
    struct sim_array *a0 = m ? sim_reg_find(m->level[0], SIM_KIND_ARRAY) : NULL;
    CUresult rc = !a0 ? CUDA_ERROR_INVALID_HANDLE
                  : !sparseProperties || !(a0->d.Flags & CUDA_ARRAY3D_SPARSE) ? CUDA_ERROR_INVALID_VALUE
                                                                             : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS) {
        CUDA_ARRAY_SPARSE_PROPERTIES *p = sparseProperties;
        sparse_props(p, a0);
        unsigned l = 0;
        size_t tail = 0;
        for (; l < m->levels; l++) {
            const struct sim_array *a = sim_reg_find(m->level[l], SIM_KIND_ARRAY);
            if (a->d.Width < p->tileExtent.width || a->rows < p->tileExtent.height || a->slices < p->tileExtent.depth)
                break;
        }
        p->miptailFirstLevel = l;
        for (unsigned k = l; k < m->levels; k++) {
            const struct sim_array *a = sim_reg_find(m->level[k], SIM_KIND_ARRAY);
            tail += a->row * a->rows * a->slices;
        }
        p->miptailSize = (tail + SIM_TILE_BYTES - 1) / SIM_TILE_BYTES * SIM_TILE_BYTES;
    }
    sim_unlock();
    return rc;
}

/* As for one array (cuArrayGetMemoryRequirements): every level's bytes, in whole 2 MiB pages, aligned to one. */
SIM_API CUresult cuMipmappedArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *memoryRequirements,
                                                       CUmipmappedArray mipmap, CUdevice device)
{
    const size_t page = 2u << 20;
    sim_lock();
    CUresult rc = sim_check_device(device);
    struct sim_mip *m = rc == CUDA_SUCCESS ? find_mip(mipmap) : NULL;
    struct sim_array *a0 = m ? sim_reg_find(m->level[0], SIM_KIND_ARRAY) : NULL;
    if (rc == CUDA_SUCCESS && !a0)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && (!memoryRequirements || !(a0->d.Flags & CUDA_ARRAY3D_DEFERRED_MAPPING)))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        size_t bytes = 0;
        for (unsigned l = 0; l < m->levels; l++) {
            const struct sim_array *a = sim_reg_find(m->level[l], SIM_KIND_ARRAY);
            bytes += a->row * a->rows * a->slices;
        }
        memset(memoryRequirements, 0, sizeof *memoryRequirements);
        memoryRequirements->size = (bytes + page - 1) / page * page;
        memoryRequirements->alignment = page;
    }
    sim_unlock();
    return rc;
}
