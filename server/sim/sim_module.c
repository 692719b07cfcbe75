/* sim_module.c - modules: cuModuleLoadData/Ex (PTX text, an sm_90 cubin, a fatbin or a fatbin wrapper),
 * cuModuleUnload, cuModuleGetFunction, cuModuleGetGlobal, cuModuleGetLoadingMode, cuModuleGetFunctionCount and
 * cuModuleEnumerateFunctions; and the building of
 * modules from a parsed image, shared with the library API (sim_library.c).
 *
 * Loading parses the image (sim_image.c: sim_ptx.c / sim_elf.c / sim_fatbin.c) into kernels and globals. Each
 * kernel becomes a function handle carrying its parameter layout and attributes; each global gets device
 * memory (charged like cuMemAlloc) holding its initial bytes. A function handle is also bound to the C
 * implementation the sim has for it, if it is one of the test kernels with the expected layout
 * (sim_kernels.c). A cubin for another SM, or a fatbin with neither sm_90 code nor PTX the device can run, is
 * CUDA_ERROR_NO_BINARY_FOR_GPU, as on an sm_90 GPU. Everything is parsed and placed at load: loading is eager
 * (cuModuleGetLoadingMode says CU_MODULE_EAGER_LOADING). Modules belong to the current context and are
 * unloaded with it; a module that instantiates a library in a context tells the library when it goes. JIT options
 * of cuModuleLoadDataEx and cuLibraryLoadData are checked (an unknown one is CUDA_ERROR_INVALID_VALUE) and the
 * output ones written as the driver writes them: an error log saying why a load failed, an info log with
 * CU_JIT_LOG_VERBOSE, the bytes written into the size options, the wall time (sim_jit_load_outputs). */
#include "sim_image.h"

#include <stdio.h>
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
    struct sim_library *lib; /* the library this module instantiates in its context, or NULL */
};

static int threads_for_regs(int regs)
{
    int r = regs < 1 ? 1 : regs;
    int per_warp = ((r * 32 + 255) / 256) * 256; /* registers are allocated per warp in units of 256 */
    int warps = 65536 / per_warp;
    int t = warps * 32;
    return t > 1024 ? 1024 : t;
}

CUresult sim_func_init(struct sim_func *f, const struct sim_kernel_desc *k, int arch, int is_ptx)
{
    if (!(f->name = strdup(k->name)))
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (k->nparams && !(f->params = malloc(k->nparams * sizeof *f->params)))
        return CUDA_ERROR_OUT_OF_MEMORY;
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
    f->ptx_version = arch;
    f->binary_version = 90;
    f->impl = sim_kernel_lookup(f->name, f->params, f->nparams);
    sim_func_cfg_default(f, &f->cfg);
    return CUDA_SUCCESS;
}

void sim_func_fini(struct sim_func *f)
{
    free(f->name);
    free(f->params);
    f->name = NULL;
    f->params = NULL;
}

void sim_module_destroy_obj(struct sim_module *m)
{
    if (m->lib)
        sim_library_module_gone(m->lib, m);
    for (size_t i = 0; i < m->nfuncs; i++) {
        struct sim_func *f = m->funcs[i];
        if (!f)
            continue;
        sim_reg_remove(f);
        sim_func_fini(f);
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

void sim_module_set_library(struct sim_module *m, struct sim_library *lib) { m->lib = lib; }

struct sim_func *sim_module_func(const struct sim_module *m, size_t i) { return i < m->nfuncs ? m->funcs[i] : NULL; }

CUresult sim_module_global(const struct sim_module *m, const char *name, CUdeviceptr *dptr, size_t *bytes)
{
    for (size_t i = 0; i < m->nglobals; i++) {
        if (strcmp(m->globals[i].name, name) == 0) {
            if (dptr)
                *dptr = (CUdeviceptr)m->globals[i].seg->base;
            if (bytes)
                *bytes = m->globals[i].seg->size;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;
}

CUresult sim_module_build(struct sim_ctx *ctx, const struct sim_image_desc *d, int is_ptx, struct sim_module **out)
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
        struct sim_func *f = calloc(1, sizeof *f);
        CUresult rc = f ? sim_func_init(f, &d->kernels[i], d->arch, is_ptx) : CUDA_ERROR_OUT_OF_MEMORY;
        if (rc == CUDA_SUCCESS && sim_reg_add(f) != 0)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        if (rc != CUDA_SUCCESS) {
            if (f)
                sim_func_fini(f);
            free(f);
            sim_module_destroy_obj(m);
            return rc;
        }
        m->funcs[m->nfuncs++] = f;
        f->h.kind = SIM_KIND_FUNC;
        f->h.ctx = ctx;
        f->mod = m;
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
    if (rc == CUDA_SUCCESS)
        rc = sim_image_parse(image, &d, &is_ptx);
    struct sim_module *m = NULL;
    if (rc == CUDA_SUCCESS) {
        rc = sim_module_build(ctx, &d, is_ptx, &m);
        sim_desc_free(&d);
    }
    if (rc == CUDA_SUCCESS)
        *module = (CUmodule)m;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleLoadData(CUmodule *module, const void *image) { return load(module, image); }

CUresult sim_jit_options(unsigned int n, CUjit_option *options, void **values)
{
    if (n > MAX_JIT_OPTIONS || (n && (!options || !values)))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < n; i++)
        if ((unsigned int)options[i] >= CU_JIT_NUM_OPTIONS)
            return CUDA_ERROR_INVALID_VALUE;
    if (n)
        sim_log_once("JIT options", "the simulated device has no JIT: it writes its logs, their sizes and the wall "
                                    "time, and ignores the rest");
    return CUDA_SUCCESS;
}

/* The sim compiles nothing: its error log says why a load failed, its info log (with CU_JIT_LOG_VERBOSE) what
 * was loaded. */
void sim_jit_load_outputs(unsigned int n, const CUjit_option *options, void **values, CUresult rc, uint64_t t0)
{
    int verbose = 0;
    for (unsigned int i = 0; i < n; i++)
        if (options[i] == CU_JIT_LOG_VERBOSE && values[i])
            verbose = 1;
    char info[128] = "", err[160] = "";
    const char *name = NULL;
    if (rc != CUDA_SUCCESS) {
        cuGetErrorName(rc, &name);
        snprintf(err, sizeof err, "error   : the simulated device could not load the image: %s (CUresult %d)",
                 name ? name : "?", (int)rc);
    } else if (verbose) {
        snprintf(info, sizeof info, "info    : the simulated device loaded the image (no JIT: nothing compiled)");
    }
    float ms = (float)((double)(sim_now_ns() - t0) / 1e6);
    size_t caps[2] = { sim_jit_log_size(n, options, values, CU_JIT_INFO_LOG_BUFFER),
                       sim_jit_log_size(n, options, values, CU_JIT_ERROR_LOG_BUFFER) };
    sim_jit_write_outputs(n, options, values, info, err, ms, caps);
}

SIM_API CUresult cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                    CUjit_option *options, void **optionValues)
{
    uint64_t t0 = sim_now_ns();
    CUresult rc = sim_jit_options(numOptions, options, optionValues);
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = load(module, image);
    sim_jit_load_outputs(numOptions, options, optionValues, rc, t0);
    return rc;
}

SIM_API CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    sim_unlock();
    if (rc == CUDA_SUCCESS)
        *mode = CU_MODULE_EAGER_LOADING;
    return rc;
}

static struct sim_module *find_module(CUmodule m) { return sim_reg_find(m, SIM_KIND_MODULE); }

/* The module behind a handle, for the calls that take one (lock held): CUDA_ERROR_INVALID_HANDLE if none. */
static CUresult lookup(CUmodule hmod, struct sim_module **m)
{
    CUresult rc = sim_check_init();
    *m = rc == CUDA_SUCCESS ? find_module(hmod) : NULL;
    return rc == CUDA_SUCCESS && !*m ? CUDA_ERROR_INVALID_HANDLE : rc;
}

SIM_API CUresult cuModuleUnload(CUmodule hmod)
{
    sim_lock();
    struct sim_module *m;
    CUresult rc = lookup(hmod, &m);
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
    struct sim_module *m;
    CUresult rc = lookup(hmod, &m);
    if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_NOT_FOUND;
        for (size_t i = 0; i < m->nfuncs; i++) {
            if (strcmp(m->funcs[i]->name, name) == 0) {
                *hfunc = (CUfunction)m->funcs[i];
                rc = CUDA_SUCCESS;
                break;
            }
        }
        if (rc == CUDA_ERROR_NOT_FOUND)
            sim_log_error("cuModuleGetFunction", "no function named %s in the module", name);
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_module *m;
    CUresult rc = lookup(hmod, &m);
    if (rc == CUDA_SUCCESS)
        rc = sim_module_global(m, name, dptr, bytes);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuModuleGetFunctionCount(unsigned int *count, CUmodule mod)
{
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_module *m;
    CUresult rc = lookup(mod, &m);
    if (rc == CUDA_SUCCESS)
        *count = (unsigned int)m->nfuncs;
    sim_unlock();
    return rc;
}

/* The module's functions in load order; numFunctions must cover them all, as the driver requires. */
SIM_API CUresult cuModuleEnumerateFunctions(CUfunction *functions, unsigned int numFunctions, CUmodule mod)
{
    if (!functions)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_module *m;
    CUresult rc = lookup(mod, &m);
    if (rc == CUDA_SUCCESS && numFunctions < m->nfuncs)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        for (size_t i = 0; i < m->nfuncs; i++)
            functions[i] = (CUfunction)m->funcs[i];
    sim_unlock();
    return rc;
}
