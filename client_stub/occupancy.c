/* occupancy.c — occupancy helpers that call back into the application. cuOccupancyMaxPotentialBlockSize(WithFlags)
 * takes a block-size → dynamic-shared-memory callback, which is the application's code: it cannot run on the
 * node. So the search runs here, in the client: for each candidate block size (a multiple of the warp size,
 * from the largest the function allows downwards) it asks the callback for the shared memory, asks the node
 * how many blocks fit on one SM (cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, cached per answer), and
 * keeps the block size with the most resident threads (the larger one on a tie), stopping once an SM is full.
 * The grid that fills the device at that size is the blocks per SM times the SM count. */
#include "fgc_impl.h"
#include "fgc_internal.h"

static CUresult search(int *minGridSize, int *blockSize, CUfunction func, CUoccupancyB2DSize cb, size_t dyn,
                       int blockSizeLimit, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!minGridSize || !blockSize || blockSizeLimit < 0) return CUDA_ERROR_INVALID_VALUE;
    CUdevice dev;
    CUresult r = cuCtxGetDevice(&dev);
    if (r != CUDA_SUCCESS) return r;
    int sms = 0, sm_threads = 0, warp = 0, fn_max = 0, dev_max = 0;
    if ((r = cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&sm_threads, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, dev)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev)) != CUDA_SUCCESS ||
        (r = cuDeviceGetAttribute(&dev_max, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev)) != CUDA_SUCCESS ||
        (r = cuFuncGetAttribute(&fn_max, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, func)) != CUDA_SUCCESS)
        return r;
    if (warp <= 0) warp = 32;
    int limit = fn_max < dev_max ? fn_max : dev_max;
    if (blockSizeLimit > 0 && blockSizeLimit < limit) limit = blockSizeLimit;
    int best_block = 0, best_blocks = 0, best_threads = 0;
    for (int aligned = (limit + warp - 1) / warp * warp; aligned > 0; aligned -= warp) {
        int b = aligned < limit ? aligned : limit;
        size_t smem = cb ? cb(b) : dyn; /* the application's callback, run here with no lock held */
        int blocks = 0;
        r = cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&blocks, func, b, smem, flags);
        if (r != CUDA_SUCCESS) return r;
        if (blocks * b > best_threads) {
            best_block = b;
            best_blocks = blocks;
            best_threads = blocks * b;
        }
        if (best_threads >= sm_threads) break;
    }
    *minGridSize = best_blocks * sms;
    *blockSize = best_block;
    return CUDA_SUCCESS;
}

CUresult fgc_cuOccupancyMaxPotentialBlockSize(int *minGridSize, int *blockSize, CUfunction func,
                                              CUoccupancyB2DSize blockSizeToDynamicSMemSize, size_t dynamicSMemSize,
                                              int blockSizeLimit) {
    return search(minGridSize, blockSize, func, blockSizeToDynamicSMemSize, dynamicSMemSize, blockSizeLimit,
                  CU_OCCUPANCY_DEFAULT);
}

CUresult fgc_cuOccupancyMaxPotentialBlockSizeWithFlags(int *minGridSize, int *blockSize, CUfunction func,
                                                       CUoccupancyB2DSize blockSizeToDynamicSMemSize,
                                                       size_t dynamicSMemSize, int blockSizeLimit,
                                                       unsigned int flags) {
    return search(minGridSize, blockSize, func, blockSizeToDynamicSMemSize, dynamicSMemSize, blockSizeLimit, flags);
}
