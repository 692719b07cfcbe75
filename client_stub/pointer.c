/* pointer.c — cuPointerGetAttribute(s) and cuPointerSetAttribute, answered in the stub from what it knows: the
 * device ranges the server allocated (unified.c: with the pool of stream-ordered memory) and the page-locked host
 * memory it handed out or registered (memory.c).
 *
 * SYNC_MEMOPS, the one attribute an application sets, is kept with the range (it goes when the memory is freed)
 * and kept here rather than forwarded: the node backs allocations with VMM mappings, on which the driver refuses
 * it. Its promise is kept in the stub instead: a synchronous memset or copy whose destination has it set returns
 * once the device has done it (the generated exports call fgc_sync_memop_done, which synchronises the legacy
 * stream those operations run on), and setting it waits for the synchronous operations already queued. Under a
 * stream capture neither waits (a legacy-stream synchronisation would end the capture). Destinations in host
 * memory need nothing: copies to host memory are complete when they return. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"

typedef struct {
    int device; /* 1 device memory, 0 pinned host, -1 unknown */
    uint64_t base, size;
    unsigned host_flags;
} ptr_info;

static ptr_info classify(CUdeviceptr p) {
    ptr_info i = {-1, 0, 0, 0};
    void *hb;
    size_t hs;
    if (fgc_device_range_find(p, &i.base, &i.size)) i.device = 1;
    else if (fgc_host_block_find((const void *)(uintptr_t)p, &hb, &hs, &i.host_flags)) {
        i.device = 0;
        i.base = (uint64_t)(uintptr_t)hb;
        i.size = hs;
    }
    return i;
}

/* 0: answered; otherwise the CUresult for this attribute. */
static CUresult one(const ptr_info *i, CUpointer_attribute a, void *data, CUdeviceptr p) {
    if (i->device < 0) return CUDA_ERROR_INVALID_VALUE;
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: {
        uint64_t ctx = 0;
        int dev = 0;
        if (!i->device || !fgc_device_range_owner(p, &ctx, &dev) || !ctx) ctx = fgc_ctx_current();
        *(CUcontext *)data = (CUcontext)(uintptr_t)ctx;
        return CUDA_SUCCESS;
    }
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned *)data = i->device ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: {
        uint64_t d = p; /* unified addressing: the same value on both sides, but for mirrored mapped memory */
        if (!i->device) fgc_mirror_device_of((const void *)(uintptr_t)p, &d);
        *(CUdeviceptr *)data = d;
        return CUDA_SUCCESS;
    }
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (i->device && !fgc_mirror_is_managed(p)) return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = (void *)(uintptr_t)p;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        *(int *)data = fgc_mirror_is_managed(p);
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
        *(int *)data = 0;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: { /* off unless set with cuPointerSetAttribute */
        int v = i->device ? fgc_device_range_sync_memops(p, 0, 0) : fgc_host_block_sync_memops((const void *)p, 0, 0);
        *(int *)data = v > 0;
        return CUDA_SUCCESS;
    }
    case CU_POINTER_ATTRIBUTE_MAPPED:
        *(int *)data = 1;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: {
        uint64_t ctx = 0;
        int dev = 0;
        if (!i->device || !fgc_device_range_owner(p, &ctx, &dev)) dev = 0; /* pinned host memory: device 0 */
        *(int *)data = dev;
        return CUDA_SUCCESS;
    }
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        *(unsigned long long *)data = i->base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(void **)data = (void *)(uintptr_t)i->base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = i->size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES:
        *(unsigned long long *)data = 0;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        *(int *)data = CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: { /* the pool of stream-ordered memory, as the application knows it */
        uint64_t pool = 0;
        int dev = 0;
        CUmemoryPool h = NULL;
        if (i->device && fgc_device_range_pool(p, &pool, &dev)) {
            h = (CUmemoryPool)(uintptr_t)pool;
            if (!pool) { /* the device's default pool, whose id the node had not handed out */
                CUresult r = cuDeviceGetDefaultMemPool(&h, dev);
                if (r != CUDA_SUCCESS) return r;
            }
        }
        *(CUmemoryPool *)data = h;
        return CUDA_SUCCESS;
    }
    default: {
        static int logged;
        return fgc_unsupported("cuPointerGetAttribute for this attribute", &logged);
    }
    }
}

CUresult fgc_cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
    FGC_REQUIRE_INIT();
    if (!data) return CUDA_ERROR_INVALID_VALUE;
    ptr_info i = classify(ptr);
    return one(&i, attribute, data, ptr);
}

CUresult fgc_cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes, void **data,
                                    CUdeviceptr ptr) {
    FGC_REQUIRE_INIT();
    if (!numAttributes || !attributes || !data) return CUDA_ERROR_INVALID_VALUE;
    ptr_info i = classify(ptr);
    for (unsigned k = 0; k < numAttributes; k++) {
        if (!data[k]) continue;
        if (i.device < 0) {
            /* Memory CUDA does not know: the driver answers success with zeroed values (type 0). */
            switch (attributes[k]) {
            case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *(unsigned *)data[k] = 0; break;
            case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data[k] = -2; break;
            case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data[k] = NULL; break;
            case CU_POINTER_ATTRIBUTE_IS_MANAGED:
            case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
            case CU_POINTER_ATTRIBUTE_MAPPED:
            case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
            case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
            case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: *(int *)data[k] = 0; break;
            default: *(unsigned long long *)data[k] = 0; break;
            }
            continue;
        }
        CUresult r = one(&i, attributes[k], data[k], ptr);
        if (r == CUDA_ERROR_INVALID_VALUE && attributes[k] == CU_POINTER_ATTRIBUTE_HOST_POINTER)
            *(void **)data[k] = NULL; /* device memory has no host address: the plural form answers NULL */
        else if (r != CUDA_SUCCESS)
            return r;
    }
    return CUDA_SUCCESS;
}

/* Queued synchronous memory operations done: the legacy stream they run on, synchronised (not under a capture). */
static CUresult drain_sync_memops(void) {
    if (fgc_capture_active() || !fgc_ctx_current()) return CUDA_SUCCESS;
    return cuStreamSynchronize(NULL);
}

CUresult fgc_cuPointerSetAttribute(const void *value, CUpointer_attribute attribute, CUdeviceptr ptr) {
    FGC_REQUIRE_INIT();
    if (!value || attribute != CU_POINTER_ATTRIBUTE_SYNC_MEMOPS) return CUDA_ERROR_INVALID_VALUE;
    ptr_info i = classify(ptr);
    if (i.device < 0) return CUDA_ERROR_INVALID_VALUE;
    int on = *(const unsigned *)value != 0;
    if (!i.device) {
        fgc_host_block_sync_memops((const void *)(uintptr_t)ptr, 1, on);
        return CUDA_SUCCESS;
    }
    int r = fgc_device_range_sync_memops(ptr, 1, on);
    if (r == -2) return CUDA_ERROR_NOT_SUPPORTED; /* the application's own VMM mapping, as the driver answers */
    if (r < 0) return CUDA_ERROR_INVALID_VALUE;
    return on ? drain_sync_memops() : CUDA_SUCCESS;
}

CUresult fgc_sync_memop_done(CUresult r, uint64_t dst, int any) {
    if (r != CUDA_SUCCESS || !fgc_sync_memops_any()) return r;
    if (!any && fgc_device_range_sync_memops(dst, 0, 0) != 1) return r;
    return drain_sync_memops();
}
