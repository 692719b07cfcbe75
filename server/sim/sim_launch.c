/* sim_launch.c - cuLaunchKernel: validation, parameter packing, recording and dispatch.
 *
 * The launch is checked as the driver would (live function and stream, current context, grid and block limits
 * of sm_90, shared memory, parameters given either as kernelParams or through `extra` with
 * CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE/END, never both). The parameters are packed into one buffer at the
 * function's parameter offsets, exactly the bytes a GPU would see. Every launch that passes validation is
 * recorded in the launch log (sim_launch_log.c). Then, if the function is one of the test kernels the sim
 * implements (sim_kernels.c), it runs at once (the stream is synchronous); any other kernel is
 * CUDA_ERROR_NOT_SUPPORTED, logged once per kernel name: the sim never pretends to have run code it cannot. */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXTRA 64

static CUresult pack_params(const struct sim_func *f, void **kernelParams, void **extra, unsigned char *buf)
{
    if (kernelParams && extra)
        return CUDA_ERROR_INVALID_VALUE;
    if (kernelParams) {
        for (uint32_t i = 0; i < f->nparams; i++) {
            if (!kernelParams[i])
                return CUDA_ERROR_INVALID_VALUE;
            memcpy(buf + f->params[i].offset, kernelParams[i], f->params[i].size);
        }
        return CUDA_SUCCESS;
    }
    if (extra) {
        const void *ptr = NULL;
        const size_t *sizep = NULL;
        int ended = 0;
        for (int i = 0; i < MAX_EXTRA && !ended; i += 2) {
            uintptr_t key = (uintptr_t)extra[i];
            if (key == (uintptr_t)CU_LAUNCH_PARAM_END_AS_INT)
                ended = 1;
            else if (key == (uintptr_t)CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT)
                ptr = extra[i + 1];
            else if (key == (uintptr_t)CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT)
                sizep = extra[i + 1];
            else
                return CUDA_ERROR_INVALID_VALUE;
        }
        if (!ended)
            return CUDA_ERROR_INVALID_VALUE;
        if (f->param_bytes == 0)
            return CUDA_SUCCESS;
        if (!ptr || !sizep || *sizep < f->param_bytes)
            return CUDA_ERROR_INVALID_VALUE;
        memcpy(buf, ptr, f->param_bytes);
        return CUDA_SUCCESS;
    }
    return f->nparams == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult check_dims(const struct sim_func *f, const unsigned int g[3], const unsigned int b[3], unsigned int shmem)
{
    if (!g[0] || !g[1] || !g[2] || !b[0] || !b[1] || !b[2])
        return CUDA_ERROR_INVALID_VALUE;
    if (g[0] > 2147483647u || g[1] > 65535 || g[2] > 65535)
        return CUDA_ERROR_INVALID_VALUE;
    if (b[0] > 1024 || b[1] > 1024 || b[2] > 64)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t threads = (uint64_t)b[0] * b[1] * b[2];
    if (threads > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    if (threads > (uint64_t)f->max_threads)
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    if ((uint64_t)shmem + (uint64_t)f->shared_bytes > 49152)
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_func *fn = rc == CUDA_SUCCESS ? sim_reg_find(f, SIM_KIND_FUNC) : NULL;
    if (rc == CUDA_SUCCESS && !fn)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        rc = sim_stream_check(hStream);
    struct sim_launch l;
    memset(&l, 0, sizeof l);
    l.grid[0] = gridDimX, l.grid[1] = gridDimY, l.grid[2] = gridDimZ;
    l.block[0] = blockDimX, l.block[1] = blockDimY, l.block[2] = blockDimZ;
    l.shmem = sharedMemBytes;
    if (rc == CUDA_SUCCESS)
        rc = check_dims(fn, l.grid, l.block, sharedMemBytes);
    unsigned char *buf = NULL;
    if (rc == CUDA_SUCCESS && !(buf = calloc(1, fn->param_bytes ? fn->param_bytes : 1)))
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS)
        rc = pack_params(fn, kernelParams, extra, buf);
    if (rc == CUDA_SUCCESS) {
        l.f = fn;
        l.params = buf;
        if (fn->impl) {
            rc = fn->impl->run(&l);
        } else {
            char what[256];
            snprintf(what, sizeof what, "cuLaunchKernel(%.200s)", fn->name);
            sim_log_once(what, "the simulated device executes only the fargpu test kernels; launch recorded, not run");
            rc = CUDA_ERROR_NOT_SUPPORTED;
        }
        sim_launch_log(&l, sim_stream_id(hStream), rc);
    }
    free(buf);
    sim_unlock();
    return rc;
}
