/* sim_launch.c - cuLaunchKernel and cuLaunchKernelEx: validation, parameter packing, recording and dispatch.
 *
 * The launch is checked as the driver would (live function or CUkernel and stream, current context, grid and
 * block limits of sm_90, dynamic shared memory up to the function's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_
 * BYTES, parameters given either as kernelParams or through `extra` with CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE/
 * END, never both). cuLaunchKernelEx takes the same launch plus attributes: those the sim honours or that are
 * hints without effect when the stream runs synchronously (priority, access policy window, memory sync domain,
 * programmatic stream serialization, cluster scheduling preference, carveout, cooperative = 0, a 1x1x1
 * cluster) are accepted; any other is CUDA_ERROR_NOT_SUPPORTED, logged once, before anything is recorded.
 *
 * The parameters are packed into one buffer at the function's parameter offsets, exactly the bytes a GPU would
 * see. Every launch that passes validation is recorded in the launch log (sim_launch_log.c). Then, if the
 * function is one of the test kernels the sim implements (sim_kernels.c), it runs at once (the stream is
 * synchronous); any other kernel is CUDA_ERROR_NOT_SUPPORTED, logged once per kernel name: the sim never
 * pretends to have run code it cannot. */
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
    if (shmem > (unsigned int)f->cfg.max_dyn_shared)
        return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

/* Caller holds sim_lock and has resolved fn; checks the stream and the launch, then records and runs it. */
CUresult sim_launch(struct sim_func *fn, const unsigned int grid[3], const unsigned int block[3], unsigned int shmem,
                    CUstream hStream, void **kernelParams, void **extra)
{
    CUresult rc = sim_stream_check_op(hStream);
    struct sim_launch l;
    memset(&l, 0, sizeof l);
    memcpy(l.grid, grid, sizeof l.grid);
    memcpy(l.block, block, sizeof l.block);
    l.shmem = shmem;
    if (rc == CUDA_SUCCESS)
        rc = check_dims(fn, l.grid, l.block, shmem);
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
    return rc;
}

SIM_API CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)
{
    const unsigned int g3[3] = { gridDimX, gridDimY, gridDimZ }, b3[3] = { blockDimX, blockDimY, blockDimZ };
    CUresult cap = CUDA_SUCCESS;
    if (sim_capture_kernel(hStream, f, g3, b3, sharedMemBytes, kernelParams, extra, &cap))
        return cap; /* a kernel node of the capture's graph */
    sim_lock();
    struct sim_func *fn = NULL;
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_resolve(f, &fn);
    if (rc == CUDA_SUCCESS) {
        const unsigned int grid[3] = { gridDimX, gridDimY, gridDimZ };
        const unsigned int block[3] = { blockDimX, blockDimY, blockDimZ };
        rc = sim_launch(fn, grid, block, sharedMemBytes, hStream, kernelParams, extra);
    }
    sim_unlock();
    return rc;
}

#define MAX_LAUNCH_ATTRS 64

static CUresult refuse_attr(const char *what)
{
    char msg[160];
    snprintf(msg, sizeof msg, "cuLaunchKernelEx attribute %s", what);
    sim_log_once(msg, "not supported by the simulated device");
    return CUDA_ERROR_NOT_SUPPORTED;
}

static CUresult check_attrs(const CUlaunchConfig *c)
{
    if (c->numAttrs > MAX_LAUNCH_ATTRS || (c->numAttrs && !c->attrs))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < c->numAttrs; i++) {
        const CUlaunchAttribute *a = &c->attrs[i];
        switch (a->id) {
        case CU_LAUNCH_ATTRIBUTE_IGNORE:
        case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW:
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
        case CU_LAUNCH_ATTRIBUTE_PRIORITY:
        case CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP:
        case CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN:
        case CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT:
            break; /* hints: a synchronous stream satisfies them as it is */
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
            if ((int)a->value.clusterSchedulingPolicyPreference < CU_CLUSTER_SCHEDULING_POLICY_DEFAULT ||
                a->value.clusterSchedulingPolicyPreference > CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING)
                return CUDA_ERROR_INVALID_VALUE;
            break;
        case CU_LAUNCH_ATTRIBUTE_COOPERATIVE:
            if (a->value.cooperative != 0)
                return refuse_attr("COOPERATIVE (nonzero)");
            break;
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
            if (a->value.clusterDim.x != 1 || a->value.clusterDim.y != 1 || a->value.clusterDim.z != 1)
                return refuse_attr("CLUSTER_DIMENSION (other than 1x1x1)");
            break;
        default: {
            char what[32];
            snprintf(what, sizeof what, "%d", (int)a->id);
            return refuse_attr(what);
        }
        }
    }
    return CUDA_SUCCESS;
}

SIM_API CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra)
{
    if (!config)
        return CUDA_ERROR_INVALID_VALUE;
    const unsigned int g3[3] = { config->gridDimX, config->gridDimY, config->gridDimZ };
    const unsigned int b3[3] = { config->blockDimX, config->blockDimY, config->blockDimZ };
    CUresult cap = CUDA_SUCCESS;
    if (check_attrs(config) == CUDA_SUCCESS &&
        sim_capture_kernel(config->hStream, f, g3, b3, config->sharedMemBytes, kernelParams, extra, &cap))
        return cap; /* a kernel node of the capture's graph (the attributes are hints here) */
    sim_lock();
    struct sim_func *fn = NULL;
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_resolve(f, &fn);
    if (rc == CUDA_SUCCESS)
        rc = check_attrs(config);
    if (rc == CUDA_SUCCESS) {
        const unsigned int grid[3] = { config->gridDimX, config->gridDimY, config->gridDimZ };
        const unsigned int block[3] = { config->blockDimX, config->blockDimY, config->blockDimZ };
        rc = sim_launch(fn, grid, block, config->sharedMemBytes, config->hStream, kernelParams, extra);
    }
    sim_unlock();
    return rc;
}
