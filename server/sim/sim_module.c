/* sim_module.c - modules: cuModuleLoadData/Ex (PTX text or an sm_90 cubin), cuModuleUnload,
 * cuModuleGetFunction and cuModuleGetGlobal.
 *
 * Loading parses the image (sim_ptx.c / sim_elf.c) into kernels and globals. Each kernel becomes a function
 * handle carrying its parameter layout and attributes; each global gets device memory (charged like
 * cuMemAlloc) holding its initial bytes. A function handle is also bound to the C implementation the sim has
 * for it, if it is one of the test kernels with the expected layout (sim_kernels.c). Fatbins are not handled:
 * CUDA_ERROR_NOT_SUPPORTED, logged once. A cubin for another SM is CUDA_ERROR_NO_BINARY_FOR_GPU, as on an
 * sm_90 GPU. Modules belong to the current context and are unloaded with it. */
#include "sim_image.h"

#include <stdlib.h>
#include <string.h>

#define PTX_NUM_REGS 32 /* no JIT here: a plausible register count for PTX-loaded functions */
#define MAX_JIT_OPTIONS 1024

struct module_global {
    char *name;
    struct sim_seg *seg;
};

struct sim_module {
    struct sim_obj h;
    struct sim_func **funcs;
    size_t nfuncs;
    struct module_global *globals;
    size_t nglobals;
};

static int threads_for_regs(int regs)
{
    int r = regs < 1 ? 1 : regs;
    int per_warp = ((r * 32 + 255) / 256) * 256; /* registers are allocated per warp in units of 256 */
    int warps = 65536 / per_warp;
    int t = warps * 32;
    return t > 1024 ? 1024 : t;
}

void sim_module_destroy_obj(struct sim_module *m)
{
    for (size_t i = 0; i < m->nfuncs; i++) {
        struct sim_func *f = m->funcs[i];
        if (!f)
            continue;
        sim_reg_remove(f);
        free(f->name);
        free(f->params);
        free(f);
    }
    for (size_t i = 0; i < m->nglobals; i++) {
        if (m->globals[i].seg)
            sim_seg_free(m->globals[i].seg);
        free(m->globals[i].name);
    }
    free(m->funcs);
    free(m->globals);
    sim_reg_remove(m);
    free(m);
}

static CUresult build(struct sim_ctx *ctx, const struct sim_image_desc *d, int is_ptx, struct sim_module **out)
{
    struct sim_module *m = calloc(1, sizeof *m);
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->h.kind = SIM_KIND_MODULE;
    m->h.ctx = ctx;
    if (sim_reg_add(m) != 0) {
        free(m);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    m->funcs = calloc(d->nkernels ? d->nkernels : 1, sizeof *m->funcs);
    m->globals = calloc(d->nglobals ? d->nglobals : 1, sizeof *m->globals);
    if (!m->funcs || !m->globals) {
        sim_module_destroy_obj(m);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < d->nkernels; i++) {
        const struct sim_kernel_desc *k = &d->kernels[i];
        struct sim_func *f = calloc(1, sizeof *f);
        if (!f || !(f->name = strdup(k->name)) ||
            (k->nparams && !(f->params = malloc(k->nparams * sizeof *f->params))) || sim_reg_add(f) != 0) {
            if (f) {
                free(f->name);
                free(f->params);
            }
            free(f);
            sim_module_destroy_obj(m);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        m->funcs[m->nfuncs++] = f;
        f->h.kind = SIM_KIND_FUNC;
        f->h.ctx = ctx;
        f->mod = m;
        f->nparams = k->nparams;
        if (k->nparams)
            memcpy(f->params, k->params, k->nparams * sizeof *f->params);
        for (uint32_t p = 0; p < k->nparams; p++)
            if (k->params[p].offset + k->params[p].size > f->param_bytes)
                f->param_bytes = k->params[p].offset + k->params[p].size;
        f->num_regs = is_ptx || k->num_regs <= 0 ? PTX_NUM_REGS : k->num_regs;
        f->shared_bytes = k->shared_bytes;
        f->local_bytes = k->local_bytes;
        f->max_threads = threads_for_regs(f->num_regs);
        if (k->max_threads < f->max_threads)
            f->max_threads = k->max_threads;
        f->ptx_version = d->arch;
        f->binary_version = 90;
        f->impl = sim_kernel_lookup(f->name, f->params, f->nparams);
    }
    for (size_t i = 0; i < d->nglobals; i++) {
        const struct sim_global_desc *g = &d->globals[i];
        struct module_global *mg = &m->globals[m->nglobals];
        mg->name = strdup(g->name);
        if (!mg->name) {
            sim_module_destroy_obj(m);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        m->nglobals++;
        CUresult rc = sim_seg_alloc(SIM_SEG_GLOBAL, ctx->device, g->size, NULL, m, &mg->seg);
        if (rc != CUDA_SUCCESS) {
            sim_module_destroy_obj(m);
            return rc;
        }
        if (g->init)
            memcpy((void *)mg->seg->base, g->init, g->size);
    }
    *out = m;
    return CUDA_SUCCESS;
}

static CUresult load(CUmodule *module, const void *image)
{
    if (!module || !image)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *ctx = NULL;
    CUresult rc = sim_current_ctx(&ctx);
    struct sim_image_desc d;
    memset(&d, 0, sizeof d);
    int is_ptx = 0;
    if (rc == CUDA_SUCCESS) {
        switch (sim_image_sniff(image)) {
        case SIM_IMAGE_FATBIN:
            sim_log_once("cuModuleLoadData (fatbin image)", "fatbins are not supported by the simulated device; load PTX or an sm_90 cubin");
            rc = CUDA_ERROR_NOT_SUPPORTED;
            break;
        case SIM_IMAGE_ELF:
            rc = sim_elf_parse(image, &d);
            if (rc == CUDA_SUCCESS && d.arch != 90) {
                sim_desc_free(&d);
                rc = CUDA_ERROR_NO_BINARY_FOR_GPU;
            }
            break;
        case SIM_IMAGE_PTX:
            is_ptx = 1;
            rc = sim_ptx_parse(image, &d);
            break;
        }
    }
    struct sim_module *m = NULL;
    if (rc == CUDA_SUCCESS) {
        rc = build(ctx, &d, is_ptx, &m);
        sim_desc_free(&d);
    }
    if (rc == CUDA_SUCCESS)
        *module = (CUmodule)m;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleLoadData(CUmodule *module, const void *image) { return load(module, image); }

SIM_API CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                    CUjit_option *options, void **optionValues)
{
    if (numOptions > MAX_JIT_OPTIONS || (numOptions && (!options || !optionValues)))
        return CUDA_ERROR_INVALID_VALUE;
    /* JIT options do not change what the sim does; log buffers are returned empty. */
    for (unsigned int i = 0; i < numOptions; i++) {
        if (options[i] != CU_JIT_INFO_LOG_BUFFER && options[i] != CU_JIT_ERROR_LOG_BUFFER)
            continue;
        CUjit_option size_opt = options[i] == CU_JIT_INFO_LOG_BUFFER ? CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES
                                                                     : CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
        for (unsigned int j = 0; j < numOptions; j++) {
            if (options[j] != size_opt)
                continue;
            size_t size = (size_t)(uintptr_t)optionValues[j];
            if (size > 0 && optionValues[i]) {
                ((char *)optionValues[i])[0] = 0;
                optionValues[j] = (void *)(uintptr_t)0; /* bytes written, excluding the terminator */
            }
        }
    }
    return load(module, image);
}

static struct sim_module *find_module(CUmodule m) { return sim_reg_find(m, SIM_KIND_MODULE); }

SIM_API CUresult cuModuleUnload(CUmodule hmod)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_module *m = rc == CUDA_SUCCESS ? find_module(hmod) : NULL;
    if (rc == CUDA_SUCCESS && !m)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        sim_module_destroy_obj(m);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    if (!hfunc || !name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_module *m = rc == CUDA_SUCCESS ? find_module(hmod) : NULL;
    if (rc == CUDA_SUCCESS && !m)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_NOT_FOUND;
        for (size_t i = 0; i < m->nfuncs; i++) {
            if (strcmp(m->funcs[i]->name, name) == 0) {
                *hfunc = (CUfunction)m->funcs[i];
                rc = CUDA_SUCCESS;
                break;
            }
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_module *m = rc == CUDA_SUCCESS ? find_module(hmod) : NULL;
    if (rc == CUDA_SUCCESS && !m)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_NOT_FOUND;
        for (size_t i = 0; i < m->nglobals; i++) {
            if (strcmp(m->globals[i].name, name) == 0) {
                if (dptr)
                    *dptr = (CUdeviceptr)m->globals[i].seg->base;
                if (bytes)
                    *bytes = m->globals[i].seg->size;
                rc = CUDA_SUCCESS;
                break;
            }
        }
    }
    sim_unlock();
    return rc;
}
