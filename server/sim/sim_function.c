/* sim_function.c - queries on function handles: cuFuncGetAttribute, cuFuncGetParamInfo, cuFuncGetName and the
 * occupancy calculator.
 *
 * Attributes come from the image (sim_elf.c: registers, static shared and local memory, launch bounds) or are
 * fixed plausible values for PTX (32 registers: the sim has no JIT). The occupancy calculator applies the
 * sm_90 limits: 2048 threads, 32 blocks, 64K registers (allocated per warp in 256-register units) and 228 KiB
 * shared memory per SM, with 1 KiB reserved per block. */
#include "sim.h"

#define SM_THREADS 2048
#define SM_BLOCKS 32
#define SM_REGS 65536
#define SM_SHARED 233472
#define BLOCK_SHARED_DEFAULT 49152
#define BLOCK_SHARED_RESERVED 1024

static struct sim_func *find_func(CUfunction f) { return sim_reg_find(f, SIM_KIND_FUNC); }

SIM_API CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
{
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_func *f = rc == CUDA_SUCCESS ? find_func(hfunc) : NULL;
    if (rc == CUDA_SUCCESS && !f)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = f->max_threads; break;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *pi = f->shared_bytes; break;
        case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *pi = f->const_bytes; break;
        case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = f->local_bytes; break;
        case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = f->num_regs; break;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = f->ptx_version; break;
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = f->binary_version; break;
        case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *pi = 0; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
            *pi = f->shared_bytes >= BLOCK_SHARED_DEFAULT ? 0 : BLOCK_SHARED_DEFAULT - f->shared_bytes;
            break;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *pi = -1; break;
        case CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
        case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH:
        case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
        case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: *pi = 0; break;
        default: rc = CUDA_ERROR_INVALID_VALUE; break;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset, size_t *paramSize)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_func *f = rc == CUDA_SUCCESS ? find_func(func) : NULL;
    if (rc == CUDA_SUCCESS && !f)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && paramIndex >= f->nparams)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        if (paramOffset)
            *paramOffset = f->params[paramIndex].offset;
        if (paramSize)
            *paramSize = f->params[paramIndex].size;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuFuncGetName(const char **name, CUfunction hfunc)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_func *f = rc == CUDA_SUCCESS ? find_func(hfunc) : NULL;
    if (rc == CUDA_SUCCESS && !f)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        *name = f->name;
    sim_unlock();
    return rc;
}

static int occupancy(const struct sim_func *f, int block, size_t dyn)
{
    if (block > f->max_threads)
        return 0;
    if (dyn > (size_t)BLOCK_SHARED_DEFAULT || (size_t)f->shared_bytes + dyn > (size_t)BLOCK_SHARED_DEFAULT)
        return 0;
    int warps = (block + 31) / 32;
    int by_threads = (SM_THREADS / 32) / warps;
    int per_warp = ((f->num_regs * 32 + 255) / 256) * 256;
    int by_regs = per_warp > 0 ? (SM_REGS / per_warp) / warps : SM_BLOCKS;
    size_t smem = (size_t)f->shared_bytes + dyn + BLOCK_SHARED_RESERVED;
    int by_smem = (int)(SM_SHARED / smem);
    int n = SM_BLOCKS;
    if (by_threads < n)
        n = by_threads;
    if (by_regs < n)
        n = by_regs;
    if (by_smem < n)
        n = by_smem;
    return n;
}

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *numBlocks, CUfunction func, int blockSize,
                                                                      size_t dynamicSMemSize, unsigned int flags)
{
    if (!numBlocks || blockSize <= 0 ||
        (flags != CU_OCCUPANCY_DEFAULT && flags != CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_func *f = rc == CUDA_SUCCESS ? find_func(func) : NULL;
    if (rc == CUDA_SUCCESS && !f)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        *numBlocks = occupancy(f, blockSize, dynamicSMemSize);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func, int blockSize,
                                                             size_t dynamicSMemSize)
{
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, func, blockSize, dynamicSMemSize,
                                                                CU_OCCUPANCY_DEFAULT);
}
