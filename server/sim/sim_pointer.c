/* sim_pointer.c - pointer attributes: cuPointerGetAttribute and cuPointerGetAttributes for the memory the
 * simulated device knows (cuMemAlloc / cuMemAllocAsync allocations, VMM mappings, module globals, pinned host
 * memory from cuMemAllocHost / cuMemHostAlloc).
 *
 * Answers follow cuda.h's description: device memory is CU_MEMORYTYPE_DEVICE with no host pointer, pinned host
 * memory is CU_MEMORYTYPE_HOST with device pointer = host pointer (unified addressing); the range of a VMM
 * mapping is its reservation, its block id that of the physical allocation; a buffer id is never reused.
 * Boolean attributes are written as unsigned int (the type cuPointerSetAttribute documents for them). What the
 * sim does not have is reported as absent: not managed, not IPC or GPUDirect RDMA capable, no memory pool
 * (memory from cuMemAllocAsync is ordinary device memory here), and P2P tokens are CUDA_ERROR_NOT_SUPPORTED.
 * A pointer the sim does not know is CUDA_ERROR_INVALID_VALUE for cuPointerGetAttribute; cuPointerGetAttributes
 * then returns the documented defaults (zeros / NULL, device ordinal CU_DEVICE_INVALID) and CUDA_SUCCESS. */
#include "sim.h"

#include <string.h>

#define MAX_ATTRS 64

static struct sim_ctx *seg_ctx(const struct sim_seg *s)
{
    if (s->kind == SIM_SEG_ALLOC || s->kind == SIM_SEG_HOST)
        return s->owner;
    if (s->kind == SIM_SEG_GLOBAL)
        return ((const struct sim_obj *)s->module)->ctx; /* the owning module, alive as long as the global */
    return NULL;                                          /* VMM memory belongs to no context */
}

static void put_uint(void *data, unsigned int v) { memcpy(data, &v, sizeof v); }
static void put_int(void *data, int v) { memcpy(data, &v, sizeof v); }
static void put_u64(void *data, unsigned long long v) { memcpy(data, &v, sizeof v); }
static void put_size(void *data, size_t v) { memcpy(data, &v, sizeof v); }
static void put_ptr(void *data, const void *v) { memcpy(data, &v, sizeof v); }

static int known_attr(CUpointer_attribute a)
{
    return a >= CU_POINTER_ATTRIBUTE_CONTEXT && a <= CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE &&
           a != CU_POINTER_ATTRIBUTE_P2P_TOKENS;
}

/* Writes attribute a of ptr (in segment s, or unknown when s is NULL) to data. strict: the behaviour of
 * cuPointerGetAttribute (errors for what does not apply) rather than cuPointerGetAttributes (defaults). */
static CUresult attr_value(const struct sim_seg *s, CUdeviceptr ptr, CUpointer_attribute a, void *data, int strict)
{
    if (a == CU_POINTER_ATTRIBUTE_P2P_TOKENS) {
        sim_log_once("CU_POINTER_ATTRIBUTE_P2P_TOKENS", "the simulated device has no nv-p2p interface");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (!known_attr(a))
        return CUDA_ERROR_INVALID_VALUE;
    if (!s) {
        if (strict)
            return CUDA_ERROR_INVALID_VALUE;
        switch (a) {
        case CU_POINTER_ATTRIBUTE_CONTEXT:
        case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: put_ptr(data, NULL); break;
        case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: put_u64(data, 0); break;
        case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: put_size(data, 0); break;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: put_int(data, CU_DEVICE_INVALID); break;
        default: put_uint(data, 0); break; /* memory type 0, booleans false, no handle types, no access */
        }
        return CUDA_SUCCESS;
    }
    struct sim_vmm_info vmm = { s->base, s->size, s->id, 0 };
    if (s->kind == SIM_SEG_VMM)
        sim_vmm_describe(s, &vmm);
    int host = s->kind == SIM_SEG_HOST;
    switch (a) {
    case CU_POINTER_ATTRIBUTE_CONTEXT: put_ptr(data, seg_ctx(s)); break;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: put_uint(data, host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE); break;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: {
        CUresult rc = sim_current_ctx(NULL);
        if (rc != CUDA_SUCCESS)
            return rc;
        put_u64(data, ptr);
        break;
    }
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (!host && strict)
            return CUDA_ERROR_INVALID_VALUE; /* device memory has no host address */
        put_ptr(data, host ? (const void *)(uintptr_t)ptr : NULL);
        break;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID: put_u64(data, s->id); break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: put_int(data, s->device); break;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: put_u64(data, vmm.resv_base); break;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: put_size(data, vmm.resv_size); break;
    case CU_POINTER_ATTRIBUTE_MAPPED: put_uint(data, 1); break;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: put_uint(data, vmm.handle_types); break;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        put_uint(data, (s->prot & SIM_PROT_W)   ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE
                       : (s->prot & SIM_PROT_R) ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READ
                                                : CU_POINTER_ATTRIBUTE_ACCESS_FLAG_NONE);
        break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: put_ptr(data, NULL); break;
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: put_size(data, s->size); break;
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: put_ptr(data, (const void *)s->base); break;
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: put_u64(data, vmm.block_id); break;
    default: put_uint(data, 0); break; /* SYNC_MEMOPS, IS_MANAGED, IPC, RDMA, HW decompress: false */
    }
    return CUDA_SUCCESS;
}

SIM_API CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS)
        rc = attr_value(sim_seg_find((uintptr_t)ptr), ptr, attribute, data, 1);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes, void **data,
                                        CUdeviceptr ptr)
{
    if (numAttributes > MAX_ATTRS || (numAttributes && (!attributes || !data)))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < numAttributes; i++)
        if (!data[i] || !known_attr(attributes[i]))
            return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    const struct sim_seg *s = rc == CUDA_SUCCESS ? sim_seg_find((uintptr_t)ptr) : NULL;
    for (unsigned int i = 0; rc == CUDA_SUCCESS && i < numAttributes; i++)
        rc = attr_value(s, ptr, attributes[i], data[i], 0);
    sim_unlock();
    return rc;
}
