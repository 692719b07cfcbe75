/* launch.c — kernel launches: cuLaunchKernel, cuLaunchKernelEx and cuLaunchCooperativeKernel. The stub packs
 * kernelParams into the function's parameter buffer using the layout cached at cuModuleGetFunction /
 * cuLibraryGetKernel time (module.c), so a launch is one async record and no round trip. A CUkernel may be
 * passed where a CUfunction is expected, as the driver allows. */
#include <stdlib.h>
#include <string.h>

#include "fgc_image.h"
#include "fgc_impl.h"
#include "fgc_internal.h"

/* Launch-configuration errors the driver reports at once are checked here too, so they are not deferred to
 * the next sync call (limits of every supported GPU: 1024 threads per block). */
static int bad_dims(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {
    return !gx || !gy || !gz || !bx || !by || !bz || gx > 0x7fffffffu || gy > 65535 || gz > 65535 || bx > 1024 ||
           by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024;
}

typedef struct {
    const void *ebuf; /* extra: packed buffer given by the caller */
    size_t esize;
} extra_buf;

static CUresult parse_extra(void **extra, extra_buf *e) {
    e->ebuf = NULL;
    e->esize = 0;
    if (!extra) return CUDA_SUCCESS;
    for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
        if (i > 64) return CUDA_ERROR_INVALID_VALUE;
        if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) e->ebuf = extra[i + 1];
        else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) e->esize = extra[i + 1] ? *(size_t *)extra[i + 1] : 0;
        else return CUDA_ERROR_INVALID_VALUE;
    }
    return e->esize && !e->ebuf ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

/* Appends "u32 size, bytes" of the parameter buffer. */
static CUresult put_params(fg_writer *w, CUfunction f, void **kernelParams, void **extra) {
    if (kernelParams && extra) return CUDA_ERROR_INVALID_VALUE;
    extra_buf e;
    CUresult r = parse_extra(extra, &e);
    if (r != CUDA_SUCCESS) return r;
    static __thread uint32_t *pairs; /* per-thread scratch, kept: no allocation per launch */
    static __thread size_t cap;
    uint32_t n = 0, total = 0;
    int rc = fgc_layout_get(fgc_handle_id(f), &n, &total, &pairs, &cap);
    if (rc == -1) return CUDA_ERROR_INVALID_HANDLE;
    if (rc == -2) return CUDA_ERROR_OUT_OF_MEMORY;
    if (!kernelParams && !extra && n) return CUDA_ERROR_INVALID_VALUE;
    if (extra) {
        fg_put_u32(w, (uint32_t)e.esize);
        fg_put(w, e.ebuf, e.esize);
        return CUDA_SUCCESS;
    }
    fg_put_u32(w, total);
    uint8_t *dst = (uint8_t *)fg_put_space(w, total);
    if (dst) {
        memset(dst, 0, total);
        for (uint32_t k = 0; k < n && kernelParams; k++)
            if (kernelParams[k]) memcpy(dst + pairs[2 * k], kernelParams[k], pairs[2 * k + 1]);
    }
    return CUDA_SUCCESS;
}

/* For graph kernel nodes (graph_build.c): the same packing into w. */
CUresult fgc_put_kernel_params(fg_writer *w, CUfunction f, void **kernelParams, void **extra) {
    return put_params(w, f, kernelParams, extra);
}

/* The record is built in a scratch writer first so a parameter error leaves the batch untouched. */
static CUresult launch(uint16_t op, CUfunction f, const uint32_t dims[7], CUstream s, const CUlaunchAttribute *attrs,
                       unsigned nattrs, void **kernelParams, void **extra) {
    FGC_REQUIRE_INIT();
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (bad_dims(dims[0], dims[1], dims[2], dims[3], dims[4], dims[5])) return CUDA_ERROR_INVALID_VALUE;
    if (nattrs > 64 || (nattrs && !attrs)) return CUDA_ERROR_INVALID_VALUE;
    static __thread fg_writer tmp; /* reused: its buffer stays allocated per thread */
    tmp.len = 0;
    tmp.failed = 0;
    tmp.limit = FG_DEFAULT_MAX_FRAME;
    CUresult r = put_params(&tmp, f, kernelParams, extra);
    if (r != CUDA_SUCCESS || tmp.failed) return r != CUDA_SUCCESS ? r : CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, f);
    fg_put(w, dims, 7 * sizeof(uint32_t));
    fgc_put_handle(w, s);
    if (op == FG_OP_cuLaunchKernelEx) {
        fg_put_u32(w, nattrs);
        fg_put(w, attrs, nattrs * sizeof *attrs);
    }
    fg_put(w, tmp.buf, tmp.len);
    return fgc_async();
}

CUresult fgc_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                            unsigned int by, unsigned int bz, unsigned int shmem, CUstream hStream,
                            void **kernelParams, void **extra) {
    uint32_t dims[7] = {gx, gy, gz, bx, by, bz, shmem};
    return launch(FG_OP_cuLaunchKernel, f, dims, hStream, NULL, 0, kernelParams, extra);
}

CUresult fgc_cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra) {
    if (!config) return CUDA_ERROR_INVALID_VALUE;
    uint32_t dims[7] = {config->gridDimX,  config->gridDimY,  config->gridDimZ,      config->blockDimX,
                        config->blockDimY, config->blockDimZ, config->sharedMemBytes};
    return launch(FG_OP_cuLaunchKernelEx, f, dims, config->hStream, config->attrs, config->numAttrs, kernelParams,
                  extra);
}

CUresult fgc_cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                       CUstream hStream, void **kernelParams) {
    uint32_t dims[7] = {gx, gy, gz, bx, by, bz, shmem};
    CUlaunchAttribute coop;
    memset(&coop, 0, sizeof coop);
    coop.id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
    coop.value.cooperative = 1;
    return launch(FG_OP_cuLaunchKernelEx, f, dims, hStream, &coop, 1, kernelParams, NULL);
}

/* Cluster occupancy queries take a launch configuration: sent like a launch's, without parameters. */
static CUresult occupancy(uint16_t op, int *out, CUfunction f, const CUlaunchConfig *c) {
    FGC_REQUIRE_INIT();
    if (!out || !c || c->numAttrs > 64 || (c->numAttrs && !c->attrs)) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    uint32_t dims[7] = {c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ,
                        c->sharedMemBytes};
    fgc_put_handle(w, f);
    fg_put(w, dims, sizeof dims);
    fgc_put_handle(w, c->hStream);
    fg_put_u32(w, c->numAttrs);
    fg_put(w, c->attrs, c->numAttrs * sizeof *c->attrs);
    fgc_expect(out, sizeof *out);
    return fgc_sync_memo(); /* the same function and configuration give the same answer (cuBLASLt asks often) */
}

CUresult fgc_cuOccupancyMaxActiveClusters(int *numClusters, CUfunction func, const CUlaunchConfig *config) {
    return occupancy(FG_OP_cuOccupancyMaxActiveClusters, numClusters, func, config);
}

CUresult fgc_cuOccupancyMaxPotentialClusterSize(int *clusterSize, CUfunction func, const CUlaunchConfig *config) {
    return occupancy(FG_OP_cuOccupancyMaxPotentialClusterSize, clusterSize, func, config);
}
