/* vmm.c — the application's own virtual memory management calls (cuMemAddressReserve, cuMemCreate, cuMemMap,
 * cuMemSetAccess, cuMemUnmap, cuMemRelease, cuMemRetainAllocationHandle, ...), replayed for one session.
 *
 * Physical allocations are counted against the lease's quota when created (fgs_charge) and given back when the
 * last reference goes. The client sees virtual allocation handles (session salt + index), never the driver's.
 * A handle the client has mapped is an entry of S->allocs (flagged client_vmm), like the server's own
 * allocations, so paging.c copies it out, releases it and maps fresh memory back at the same address: while
 * it is mapped, the real handle is the one in that entry (paging may have replaced it); while unmapped, the one
 * kept here. The server holds exactly one driver reference per live handle; the client's references (create,
 * retain, release) are counted here, and the driver's reference goes when the client's count is 0 and the
 * handle is not mapped.
 *
 * What paging can bring back faithfully decides what is supported: a handle is mapped whole (offset 0, its
 * full size) at one place at a time, device memory only, without compression. Mapping a handle at a second
 * address or in part, host or NUMA-node allocations and compressible memory are refused with
 * CUDA_ERROR_NOT_SUPPORTED and a log line naming what was asked. Shareable-handle export and import are refused
 * too (IPC across workers is not brokered yet). Reservations are the session's VA: mappings must lie in one. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define VMM_MAX_HANDLES 65536
#define VMM_MAX_RESV 65536
#define VMM_MAX_ACCESS 64

typedef struct {
    CUmemGenericAllocationHandle real; /* valid while not mapped; 0: free slot */
    size_t size;
    int dev;
    uint32_t refs;      /* the client's references: create + retains - releases */
    CUdeviceptr at;     /* where it is mapped; 0: not mapped */
    int live;
    int imported;       /* another session's memory (ipc.c): charged to that session, not to this one */
    int shared;         /* exported to other sessions (ipc.c) */
} vmm_handle;

typedef struct {
    CUdeviceptr base;
    size_t size;
} vmm_resv;

struct fgs_vmm {
    vmm_handle *h;
    size_t n_h, cap_h;
    vmm_resv *r;
    size_t n_r, cap_r;
};

static struct fgs_vmm *vmm(fgs_session *S) {
    if (!S->vmm) S->vmm = (struct fgs_vmm *)calloc(1, sizeof *S->vmm);
    return S->vmm;
}

static CUresult refuse(fgs_session *S, const char *what) {
    fgs_log(S, "client VMM: %s is not supported (paging could not bring it back): CUDA_ERROR_NOT_SUPPORTED", what);
    return CUDA_ERROR_NOT_SUPPORTED;
}

static uint64_t handle_id(fgs_session *S, size_t i) { return ((S->salt & 0xffffff) << 32) | 0x8000000000000000ull | (i + 1); }

static vmm_handle *handle_get(fgs_session *S, uint64_t id) {
    struct fgs_vmm *V = S->vmm;
    if (!V || (id >> 32) != (((S->salt & 0xffffff)) | 0x80000000ull)) return NULL;
    uint64_t i = (id & 0xffffffffull) - 1;
    if (i >= V->n_h || !V->h[i].live) return NULL;
    return &V->h[i];
}

static fgs_alloc *mapping_at(fgs_session *S, CUdeviceptr p) {
    for (size_t i = 0; i < S->n_allocs; i++)
        if (S->allocs[i].client_vmm && S->allocs[i].ptr == p) return &S->allocs[i];
    return NULL;
}

static vmm_resv *resv_containing(fgs_session *S, uint64_t p, uint64_t n) {
    struct fgs_vmm *V = S->vmm;
    for (size_t i = 0; V && i < V->n_r; i++)
        if (p >= V->r[i].base && n <= V->r[i].size && p - V->r[i].base <= V->r[i].size - n) return &V->r[i];
    return NULL;
}

/* The driver's reference goes once the client holds none and the handle is not mapped. */
static void handle_maybe_free(fgs_session *S, vmm_handle *h) {
    if (h->refs || h->at) return;
    S->api->cuMemRelease(h->real);
    if (!h->imported) fgs_uncharge_dev(S, h->dev, h->size);
    memset(h, 0, sizeof *h);
}

CUresult fgs_cuMemAddressReserve(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), align = fg_get_u64(r), addr = fg_get_u64(r), flags = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    struct fgs_vmm *V = vmm(S);
    if (!V) return CUDA_ERROR_OUT_OF_MEMORY;
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (V->n_r == V->cap_r) {
        if (V->cap_r >= VMM_MAX_RESV) return CUDA_ERROR_OUT_OF_MEMORY;
        size_t cap = V->cap_r ? V->cap_r * 2 : 16;
        vmm_resv *nr = (vmm_resv *)realloc(V->r, cap * sizeof *nr);
        if (!nr) return CUDA_ERROR_OUT_OF_MEMORY;
        V->r = nr;
        V->cap_r = cap;
    }
    CUdeviceptr p = 0;
    CUresult res = S->api->cuMemAddressReserve(&p, (size_t)size, (size_t)align, (CUdeviceptr)addr, flags);
    if (res != CUDA_SUCCESS) return res;
    V->r[V->n_r++] = (vmm_resv){p, (size_t)size};
    fg_put_u64(out, p);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemAddressFree(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r), size = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    struct fgs_vmm *V = S->vmm;
    for (size_t i = 0; V && i < V->n_r; i++) {
        if (V->r[i].base != p || V->r[i].size != size) continue;
        for (size_t k = 0; k < S->n_allocs; k++) /* still mapped inside: the driver refuses too */
            if (S->allocs[k].client_vmm && S->allocs[k].ptr >= p && S->allocs[k].ptr - p < size)
                return CUDA_ERROR_INVALID_VALUE;
        CUresult res = S->api->cuMemAddressFree(p, (size_t)size);
        if (res == CUDA_SUCCESS) V->r[i] = V->r[--V->n_r];
        return res;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult fgs_cuMemCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), flags = fg_get_u64(r);
    const uint8_t *pb = fg_take(r, sizeof(CUmemAllocationProp));
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUmemAllocationProp prop;
    memcpy(&prop, pb, sizeof prop);
    struct fgs_vmm *V = vmm(S);
    if (!V) return CUDA_ERROR_OUT_OF_MEMORY;
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (prop.type != CU_MEM_ALLOCATION_TYPE_PINNED) return CUDA_ERROR_INVALID_VALUE;
    if (prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE) return refuse(S, "cuMemCreate of host or NUMA memory");
    if (prop.allocFlags.compressionType) return refuse(S, "cuMemCreate of compressible memory");
    if (prop.requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE &&
        prop.requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return refuse(S, "cuMemCreate with a shareable handle type other than a POSIX file descriptor (IPC)");
    size_t slot = V->n_h;
    for (size_t i = 0; i < V->n_h; i++)
        if (!V->h[i].live) { slot = i; break; }
    if (slot == V->n_h && V->n_h == V->cap_h) {
        if (V->cap_h >= VMM_MAX_HANDLES) return CUDA_ERROR_OUT_OF_MEMORY;
        size_t cap = V->cap_h ? V->cap_h * 2 : 16;
        vmm_handle *nh = (vmm_handle *)realloc(V->h, cap * sizeof *nh);
        if (!nh) return CUDA_ERROR_OUT_OF_MEMORY;
        V->h = nh;
        V->cap_h = cap;
    }
    CUresult res = fgs_charge_dev(S, prop.location.id, size);
    if (res != CUDA_SUCCESS) return res;
    CUmemGenericAllocationHandle h = 0;
    res = S->api->cuMemCreate(&h, (size_t)size, &prop, flags);
    if (res != CUDA_SUCCESS) {
        fgs_uncharge_dev(S, prop.location.id, size);
        return res;
    }
    if (slot == V->n_h) V->n_h++;
    V->h[slot] = (vmm_handle){h, (size_t)size, prop.location.id, 1, 0, 1, 0, 0};
    fg_put_u64(out, handle_id(S, slot));
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemRelease(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    vmm_handle *h = handle_get(S, id);
    if (!h || !h->refs) return CUDA_ERROR_INVALID_VALUE;
    h->refs--;
    handle_maybe_free(S, h);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemMap(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r), size = fg_get_u64(r), off = fg_get_u64(r), id = fg_get_u64(r), flags = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    vmm_handle *h = handle_get(S, id);
    if (!h) return CUDA_ERROR_INVALID_HANDLE;
    if (!size || !resv_containing(S, p, size)) return CUDA_ERROR_INVALID_VALUE;
    if (h->at) return refuse(S, "cuMemMap of a handle already mapped at another address");
    if (off != 0 || size != h->size) return refuse(S, "cuMemMap of part of a handle (offset or size not the whole)");
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (p < a->ptr + a->mapped && a->ptr < p + size) return CUDA_ERROR_INVALID_VALUE; /* overlaps a mapping */
    }
    if (S->n_allocs == S->cap_allocs) {
        size_t cap = S->cap_allocs ? S->cap_allocs * 2 : 64;
        fgs_alloc *na = (fgs_alloc *)realloc(S->allocs, cap * sizeof *na);
        if (!na) return CUDA_ERROR_OUT_OF_MEMORY;
        S->allocs = na;
        S->cap_allocs = cap;
    }
    CUresult res = S->api->cuMemMap((CUdeviceptr)p, (size_t)size, 0, h->real, flags);
    if (res != CUDA_SUCCESS) return res;
    fgs_alloc a;
    memset(&a, 0, sizeof a);
    a.ptr = p;
    a.size = a.mapped = (size_t)size;
    a.handle = h->real;
    a.dev = h->dev;
    a.client_vmm = 1;
    S->allocs[S->n_allocs++] = a;
    h->at = p;
    h->real = 0; /* the entry in S->allocs holds it now (paging may replace it) */
    return CUDA_SUCCESS;
}

static vmm_handle *handle_mapped_at(fgs_session *S, CUdeviceptr p) {
    struct fgs_vmm *V = S->vmm;
    for (size_t i = 0; V && i < V->n_h; i++)
        if (V->h[i].live && V->h[i].at == p) return &V->h[i];
    return NULL;
}

static void unmap_one(fgs_session *S, size_t k) {
    fgs_alloc a = S->allocs[k];
    S->api->cuMemUnmap(a.ptr, a.mapped);
    S->allocs[k] = S->allocs[--S->n_allocs];
    vmm_handle *h = handle_mapped_at(S, a.ptr);
    if (!h) return;
    h->at = 0;
    h->real = a.handle;
    handle_maybe_free(S, h);
}

CUresult fgs_cuMemUnmap(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r), size = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!size || !resv_containing(S, p, size)) return CUDA_ERROR_INVALID_VALUE;
    int any = 0;
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (!(p < a->ptr + a->mapped && a->ptr < p + size)) continue;
        if (!a->client_vmm) return CUDA_ERROR_INVALID_VALUE;
        if (a->ptr < p || a->ptr + a->mapped > p + size) return refuse(S, "cuMemUnmap of part of a mapping");
        any = 1;
    }
    if (!any) return CUDA_ERROR_INVALID_VALUE;
    S->api->cuCtxSynchronize(); /* work queued before may still use the memory */
    for (size_t i = S->n_allocs; i-- > 0;) {
        fgs_alloc *a = &S->allocs[i];
        if (a->client_vmm && a->ptr >= p && a->ptr + a->mapped <= p + size) unmap_one(S, i);
    }
    return CUDA_SUCCESS;
}

/* The range must be covered by the session's own client mappings. */
static int covered(fgs_session *S, uint64_t p, uint64_t size) {
    uint64_t at = p;
    while (at < p + size) {
        fgs_alloc *a = NULL;
        for (size_t i = 0; i < S->n_allocs && !a; i++)
            if (S->allocs[i].client_vmm && at >= S->allocs[i].ptr && at - S->allocs[i].ptr < S->allocs[i].mapped)
                a = &S->allocs[i];
        if (!a) return 0;
        at = a->ptr + a->mapped;
    }
    return 1;
}

CUresult fgs_cuMemSetAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r), size = fg_get_u64(r), count = fg_get_u64(r);
    if (r->failed || count > VMM_MAX_ACCESS) return FGS_PROTOCOL_ERROR;
    const uint8_t *db = fg_take(r, (size_t)count * sizeof(CUmemAccessDesc));
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!size || !count || p + size < p || !covered(S, p, size)) return CUDA_ERROR_INVALID_VALUE;
    CUmemAccessDesc d[VMM_MAX_ACCESS];
    memcpy(d, db, (size_t)count * sizeof d[0]);
    for (uint64_t i = 0; i < count; i++)
        if (d[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) return refuse(S, "cuMemSetAccess for a host location");
    CUresult res = S->api->cuMemSetAccess((CUdeviceptr)p, (size_t)size, d, (size_t)count);
    if (res == CUDA_SUCCESS) fgs_peer_note_access(S, p, size, d, (size_t)count); /* a page-in grants them again */
    return res;
}

CUresult fgs_cuMemRetainAllocationHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    struct fgs_vmm *V = S->vmm;
    for (size_t i = 0; V && i < V->n_h; i++) {
        vmm_handle *h = &V->h[i];
        if (h->live && h->at && p >= h->at && p - h->at < h->size) {
            h->refs++;
            fg_put_u64(out, handle_id(S, i));
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult fgs_cuMemGetAllocationPropertiesFromHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    vmm_handle *h = handle_get(S, id);
    if (!h) return CUDA_ERROR_INVALID_VALUE;
    CUmemGenericAllocationHandle real = h->real;
    if (h->at) {
        fgs_alloc *a = mapping_at(S, h->at);
        if (!a) return CUDA_ERROR_INVALID_VALUE;
        real = a->handle;
    }
    if (!S->api->cuMemGetAllocationPropertiesFromHandle) return fgs_missing(S, "cuMemGetAllocationPropertiesFromHandle");
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    CUresult res = S->api->cuMemGetAllocationPropertiesFromHandle(&prop, real);
    if (res != CUDA_SUCCESS) return res;
    fg_put(out, &prop, sizeof prop);
    return CUDA_SUCCESS;
}

/* The driver's handle behind the client's handle id (held by its mapping while mapped), for an export (ipc.c). */
CUresult fgs_vmm_real(fgs_session *S, uint64_t id, CUmemGenericAllocationHandle *real, size_t *size, int *dev) {
    vmm_handle *h = handle_get(S, id);
    if (!h) return CUDA_ERROR_INVALID_VALUE;
    *real = h->real;
    if (h->at) {
        fgs_alloc *a = mapping_at(S, h->at);
        if (!a) return CUDA_ERROR_INVALID_VALUE;
        *real = a->handle;
    }
    *size = h->size;
    *dev = h->dev;
    return *real ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* A handle imported from another session of the lease (ipc.c) becomes one of the client's: 0 when there is no room
 * (the caller releases `real`). It is not charged here: its memory is the exporter's. */
uint64_t fgs_vmm_adopt(fgs_session *S, CUmemGenericAllocationHandle real, size_t size, int dev) {
    struct fgs_vmm *V = vmm(S);
    if (!V) return 0;
    size_t slot = V->n_h;
    for (size_t i = 0; i < V->n_h; i++)
        if (!V->h[i].live) { slot = i; break; }
    if (slot == V->n_h && V->n_h == V->cap_h) {
        if (V->cap_h >= VMM_MAX_HANDLES) return 0;
        size_t cap = V->cap_h ? V->cap_h * 2 : 16;
        vmm_handle *nh = (vmm_handle *)realloc(V->h, cap * sizeof *nh);
        if (!nh) return 0;
        V->h = nh;
        V->cap_h = cap;
    }
    if (slot == V->n_h) V->n_h++;
    V->h[slot] = (vmm_handle){real, size, dev, 1, 0, 1, 1, 0};
    return handle_id(S, slot);
}

void fgs_vmm_mark_shared(fgs_session *S, uint64_t id) {
    vmm_handle *h = handle_get(S, id);
    if (h) h->shared = 1;
}

/* Whether a live handle is shared with another session (exported or imported): paging must leave it be. */
int fgs_vmm_shared(fgs_session *S) {
    struct fgs_vmm *V = S->vmm;
    for (size_t i = 0; V && i < V->n_h; i++)
        if (V->h[i].live && (V->h[i].shared || V->h[i].imported)) return 1;
    return 0;
}

/* At the session's end, before the server's own allocations go: unmap, release, free every reservation. */
void fgs_vmm_close(fgs_session *S) {
    struct fgs_vmm *V = S->vmm;
    if (!V) return;
    int any = 0;
    for (size_t i = 0; i < S->n_allocs; i++) any |= S->allocs[i].client_vmm;
    if (any) S->api->cuCtxSynchronize();
    for (size_t i = 0; i < V->n_h; i++) V->h[i].refs = 0; /* the client is gone */
    for (size_t i = S->n_allocs; i-- > 0;)
        if (S->allocs[i].client_vmm) unmap_one(S, i);
    for (size_t i = 0; i < V->n_h; i++)
        if (V->h[i].live) handle_maybe_free(S, &V->h[i]);
    for (size_t i = 0; i < V->n_r; i++) S->api->cuMemAddressFree(V->r[i].base, V->r[i].size);
    free(V->h);
    free(V->r);
    free(V);
    S->vmm = NULL;
}
