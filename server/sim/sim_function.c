/* sim_function.c - queries and settings on function handles: cuFuncGetAttribute, cuFuncSetAttribute,
 * cuFuncSetCacheConfig, cuFuncGetParamInfo, cuFuncGetName and the occupancy calculator. A CUkernel is accepted
 * wherever a CUfunction is (it stands for its function in the current context, see sim_library.c).
 *
 * Attributes come from the image (sim_elf.c: registers, static shared and local memory, launch bounds) or are
 * fixed plausible values for PTX (32 registers: the sim has no JIT). The settable ones are kept per function
 * (struct sim_func_cfg) and are honoured where the sim can: the dynamic shared memory limit is what launches
 * and the occupancy calculator check; carveout, cluster policy and cache preference are hints with no effect
 * on a device that runs kernels in C. Required cluster dimensions are refused (CUDA_ERROR_NOT_SUPPORTED):
 * the sim does not launch clusters. The occupancy calculator applies the sm_90 limits: 2048 threads, 32
 * blocks, 64K registers (allocated per warp in 256-register units) and 228 KiB shared memory per SM, with
 * 1 KiB reserved per block. */
#include "sim.h"

#define SM_THREADS 2048
#define SM_BLOCKS 32
#define SM_REGS 65536
#define SM_SHARED 233472
#define SM_COUNT 132
#define BLOCK_SHARED_DEFAULT 49152
#define BLOCK_SHARED_OPTIN 232448
#define BLOCK_SHARED_RESERVED 1024

void sim_func_cfg_default(const struct sim_func *f, struct sim_func_cfg *cfg)
{
    cfg->max_dyn_shared = f->shared_bytes >= BLOCK_SHARED_DEFAULT ? 0 : BLOCK_SHARED_DEFAULT - f->shared_bytes;
    cfg->carveout = -1;
    cfg->non_portable_cluster = 0;
    cfg->cluster_policy = CU_CLUSTER_SCHEDULING_POLICY_DEFAULT;
    cfg->cache_config = CU_FUNC_CACHE_PREFER_NONE;
}

CUresult sim_func_get_attr(const struct sim_func *f, const struct sim_func_cfg *cfg, CUfunction_attribute a, int *pi)
{
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = f->max_threads; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *pi = f->shared_bytes; break;
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *pi = f->const_bytes; break;
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = f->local_bytes; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = f->num_regs; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = f->ptx_version; break;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = f->binary_version; break;
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *pi = 0; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = cfg->max_dyn_shared; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *pi = cfg->carveout; break;
    case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED: *pi = cfg->non_portable_cluster; break;
    case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: *pi = cfg->cluster_policy; break;
    case CU_FUNC_ATTRIBUTE_CLUSTER_SIZE_MUST_BE_SET:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH: *pi = 0; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult sim_func_set_attr(const struct sim_func *f, struct sim_func_cfg *cfg, CUfunction_attribute a, int value)
{
    switch (a) {
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES:
        if (value < 0 || value > BLOCK_SHARED_OPTIN - f->shared_bytes)
            return CUDA_ERROR_INVALID_VALUE;
        cfg->max_dyn_shared = value;
        return CUDA_SUCCESS;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
        if (value < -1 || value > 100)
            return CUDA_ERROR_INVALID_VALUE;
        cfg->carveout = value;
        return CUDA_SUCCESS;
    case CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED:
        if (value != 0 && value != 1)
            return CUDA_ERROR_INVALID_VALUE;
        cfg->non_portable_cluster = value;
        return CUDA_SUCCESS;
    case CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
        if (value < CU_CLUSTER_SCHEDULING_POLICY_DEFAULT || value > CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING)
            return CUDA_ERROR_INVALID_VALUE;
        cfg->cluster_policy = value;
        return CUDA_SUCCESS;
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT:
    case CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH:
        if (value == 0)
            return CUDA_SUCCESS; /* "no requirement": what the function already has */
        sim_log_once("required cluster dimensions", "the simulated device does not launch thread block clusters");
        return CUDA_ERROR_NOT_SUPPORTED;
    default:
        return CUDA_ERROR_INVALID_VALUE; /* read-only or unknown */
    }
}

CUresult sim_func_check_cache_config(CUfunc_cache config)
{
    switch (config) {
    case CU_FUNC_CACHE_PREFER_NONE:
    case CU_FUNC_CACHE_PREFER_SHARED:
    case CU_FUNC_CACHE_PREFER_L1:
    case CU_FUNC_CACHE_PREFER_EQUAL:
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

SIM_API CUresult cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction hfunc)
{
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_func_resolve(hfunc, &f);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_get_attr(f, &f->cfg, attrib, pi);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value)
{
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_func_resolve(hfunc, &f);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_set_attr(f, &f->cfg, attrib, value);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config)
{
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_func_resolve(hfunc, &f);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_check_cache_config(config);
    if (rc == CUDA_SUCCESS)
        f->cfg.cache_config = config;
    sim_unlock();
    return rc;
}

CUresult sim_func_param_info(const struct sim_func *f, size_t index, size_t *offset, size_t *size)
{
    if (index >= f->nparams)
        return CUDA_ERROR_INVALID_VALUE;
    if (offset)
        *offset = f->params[index].offset;
    if (size)
        *size = f->params[index].size;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset, size_t *paramSize)
{
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_func_resolve(func, &f);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_param_info(f, paramIndex, paramOffset, paramSize);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuFuncGetName(const char **name, CUfunction hfunc)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_func_resolve(hfunc, &f);
    if (rc == CUDA_SUCCESS)
        *name = f->name;
    sim_unlock();
    return rc;
}

/* The resources occupancy depends on, copied out so the B2D callback can run without the lock. */
struct occ_func {
    int max_threads, shared_bytes, num_regs, max_dyn_shared;
};

static int occupancy(const struct occ_func *f, int block, size_t dyn)
{
    if (block > f->max_threads || dyn > (size_t)f->max_dyn_shared)
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

static CUresult occ_func_get(CUfunction func, struct occ_func *o)
{
    sim_lock();
    struct sim_func *f = NULL;
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_resolve(func, &f);
    if (rc == CUDA_SUCCESS) {
        o->max_threads = f->max_threads;
        o->shared_bytes = f->shared_bytes;
        o->num_regs = f->num_regs;
        o->max_dyn_shared = f->cfg.max_dyn_shared;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *numBlocks, CUfunction func, int blockSize,
                                                                      size_t dynamicSMemSize, unsigned int flags)
{
    if (!numBlocks || blockSize <= 0 ||
        (flags != CU_OCCUPANCY_DEFAULT && flags != CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE))
        return CUDA_ERROR_INVALID_VALUE;
    struct occ_func o;
    CUresult rc = occ_func_get(func, &o);
    if (rc == CUDA_SUCCESS)
        *numBlocks = occupancy(&o, blockSize, dynamicSMemSize);
    return rc;
}

SIM_API CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func, int blockSize,
                                                             size_t dynamicSMemSize)
{
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, func, blockSize, dynamicSMemSize,
                                                                CU_OCCUPANCY_DEFAULT);
}

/* The block size with the most resident threads per SM (the largest such, trying warp multiples downwards),
 * and the grid that fills the device at that size. blockSizeToDynamicSMemSize, when given, says how much
 * dynamic shared memory a block of each size needs; it is the caller's code and runs without the lock. */
SIM_API CUresult cuOccupancyMaxPotentialBlockSize(int *minGridSize, int *blockSize, CUfunction func,
                                                  CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                  size_t dynamicSMemSize, int blockSizeLimit)
{
    if (!minGridSize || !blockSize || blockSizeLimit < 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct occ_func o;
    CUresult rc = occ_func_get(func, &o);
    if (rc != CUDA_SUCCESS)
        return rc;
    int limit = o.max_threads < 1024 ? o.max_threads : 1024;
    if (blockSizeLimit > 0 && blockSizeLimit < limit)
        limit = blockSizeLimit;
    int best_block = 0, best_blocks = 0, best_threads = 0;
    for (int aligned = (limit + 31) / 32 * 32; aligned > 0; aligned -= 32) {
        int b = aligned < limit ? aligned : limit;
        size_t dyn = blockSizeToDynamicSMemSize ? blockSizeToDynamicSMemSize(b) : dynamicSMemSize;
        int blocks = occupancy(&o, b, dyn);
        if (blocks * b > best_threads) {
            best_block = b;
            best_blocks = blocks;
            best_threads = blocks * b;
        }
        if (best_threads == SM_THREADS)
            break;
    }
    *minGridSize = best_blocks * SM_COUNT;
    *blockSize = best_block;
    return CUDA_SUCCESS;
}
