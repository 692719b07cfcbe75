/* sim_library.c - the context-independent loading API of CUDA 12+: cuLibraryLoadData/Unload, cuLibraryGetKernel,
 * cuLibraryGetModule, cuLibraryGetKernelCount, cuLibraryEnumerateKernels, cuLibraryGetGlobal, and the CUkernel
 * calls cuKernelGetFunction/GetName/GetParamInfo/GetAttribute/SetAttribute/SetCacheConfig/GetLibrary.
 *
 * A library holds the parsed image (the same formats as cuModuleLoadData: sim_image.c) and one CUkernel per
 * kernel; it belongs to no context. In a context it is instantiated as an ordinary module (sim_module.c) with
 * its functions in the library's kernel order. The image is parsed and checked completely at load. The
 * instantiation happens eagerly in the context current at cuLibraryLoadData, if any (so a failure, e.g. no
 * device memory for its globals, is reported by the load), and in any other context on first use there:
 * cuKernelGetFunction, cuLibraryGetModule, cuLibraryGetGlobal, or a CUkernel passed where a CUfunction is
 * accepted (cuLaunchKernel, cuFuncGetAttribute, ...: sim_func_resolve). The instance goes with its context (or
 * when its module is unloaded: it is then made again on next use); cuLibraryUnload removes all of them.
 *
 * Kernel attributes set with cuKernelSetAttribute/cuKernelSetCacheConfig are kept per device and apply to the
 * kernel's functions in every context on that device, present and future; cuFuncSetAttribute on one of those
 * functions changes that context's function only. JIT and library options are ignored (logged once): the sim
 * has no JIT, and it copies what it needs from the image at load (CU_LIBRARY_BINARY_IS_PRESERVED is moot). */
#include "sim_image.h"

#include <stdlib.h>
#include <string.h>

#define MAX_LIBRARY_OPTIONS 64

struct instance {
    struct sim_ctx *ctx;
    struct sim_module *mod;
};

struct sim_kernel {
    struct sim_obj h;
    struct sim_library *lib;
    size_t index;          /* in the library's desc, and of its function in every instance module */
    struct sim_func proto; /* name, parameters and attributes; not a handle */
    struct sim_func_cfg cfg[SIM_MAX_DEVICES];
};

struct sim_library {
    struct sim_obj h;
    struct sim_image_desc desc;
    int is_ptx;
    struct sim_kernel **kernels;
    size_t nkernels;
    struct instance *inst;
    size_t ninst, capinst;
};

static struct sim_library *find_library(CUlibrary l) { return sim_reg_find(l, SIM_KIND_LIBRARY); }
static struct sim_kernel *find_kernel(CUkernel k) { return sim_reg_find(k, SIM_KIND_KERNEL); }

void sim_library_module_gone(struct sim_library *lib, struct sim_module *m)
{
    for (size_t i = 0; i < lib->ninst; i++) {
        if (lib->inst[i].mod == m) {
            lib->inst[i] = lib->inst[--lib->ninst];
            return;
        }
    }
}

static void library_destroy(struct sim_library *lib)
{
    while (lib->ninst > 0)
        sim_module_destroy_obj(lib->inst[lib->ninst - 1].mod); /* calls sim_library_module_gone */
    for (size_t i = 0; i < lib->nkernels; i++) {
        sim_reg_remove(lib->kernels[i]);
        sim_func_fini(&lib->kernels[i]->proto);
        free(lib->kernels[i]);
    }
    free(lib->kernels);
    free(lib->inst);
    sim_desc_free(&lib->desc);
    sim_reg_remove(lib);
    free(lib);
}

/* The library's module in ctx, built there on first use. */
static CUresult instance(struct sim_library *lib, struct sim_ctx *ctx, struct sim_module **out)
{
    for (size_t i = 0; i < lib->ninst; i++) {
        if (lib->inst[i].ctx == ctx) {
            *out = lib->inst[i].mod;
            return CUDA_SUCCESS;
        }
    }
    if (lib->ninst == lib->capinst) {
        size_t ncap = lib->capinst ? lib->capinst * 2 : 4;
        struct instance *ni = realloc(lib->inst, ncap * sizeof *ni);
        if (!ni)
            return CUDA_ERROR_OUT_OF_MEMORY;
        lib->inst = ni;
        lib->capinst = ncap;
    }
    struct sim_module *m = NULL;
    CUresult rc = sim_module_build(ctx, &lib->desc, lib->is_ptx, &m);
    if (rc != CUDA_SUCCESS)
        return rc;
    for (size_t i = 0; i < lib->nkernels; i++)
        sim_module_func(m, i)->cfg = lib->kernels[i]->cfg[ctx->device];
    sim_module_set_library(m, lib);
    lib->inst[lib->ninst].ctx = ctx;
    lib->inst[lib->ninst].mod = m;
    lib->ninst++;
    *out = m;
    return CUDA_SUCCESS;
}

static CUresult current_instance(struct sim_library *lib, struct sim_module **out)
{
    struct sim_ctx *ctx = NULL;
    CUresult rc = sim_current_ctx(&ctx);
    return rc == CUDA_SUCCESS ? instance(lib, ctx, out) : rc;
}

static CUresult kernel_function(struct sim_kernel *k, struct sim_func **out)
{
    struct sim_module *m = NULL;
    CUresult rc = current_instance(k->lib, &m);
    if (rc == CUDA_SUCCESS)
        *out = sim_module_func(m, k->index);
    return rc;
}

CUresult sim_func_resolve(const void *handle, struct sim_func **out)
{
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sim_func *f = sim_reg_find(handle, SIM_KIND_FUNC);
    if (f) {
        *out = f;
        return CUDA_SUCCESS;
    }
    struct sim_kernel *k = sim_reg_find(handle, SIM_KIND_KERNEL);
    return k ? kernel_function(k, out) : CUDA_ERROR_INVALID_HANDLE;
}

static CUresult check_library_options(unsigned int n, CUlibraryOption *options, void **values)
{
    if (n > MAX_LIBRARY_OPTIONS || (n && (!options || !values)))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < n; i++)
        if ((unsigned int)options[i] >= (unsigned int)CU_LIBRARY_NUM_OPTIONS)
            return CUDA_ERROR_INVALID_VALUE;
    if (n)
        sim_log_once("library options", "ignored by the simulated device (it copies what it needs at load)");
    return CUDA_SUCCESS;
}

static CUresult library_create(const void *code, struct sim_library **out)
{
    struct sim_library *lib = calloc(1, sizeof *lib);
    if (!lib)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = sim_image_parse(code, &lib->desc, &lib->is_ptx);
    if (rc != CUDA_SUCCESS) {
        free(lib);
        return rc;
    }
    lib->h.kind = SIM_KIND_LIBRARY;
    if (sim_reg_add(lib) != 0) {
        sim_desc_free(&lib->desc);
        free(lib);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    size_t n = lib->desc.nkernels;
    if (!(lib->kernels = calloc(n ? n : 1, sizeof *lib->kernels))) {
        library_destroy(lib);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        struct sim_kernel *k = calloc(1, sizeof *k);
        rc = k ? sim_func_init(&k->proto, &lib->desc.kernels[i], lib->desc.arch, lib->is_ptx)
               : CUDA_ERROR_OUT_OF_MEMORY;
        if (rc == CUDA_SUCCESS && sim_reg_add(k) != 0)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        if (rc != CUDA_SUCCESS) {
            if (k)
                sim_func_fini(&k->proto);
            free(k);
            library_destroy(lib);
            return rc;
        }
        k->h.kind = SIM_KIND_KERNEL;
        k->lib = lib;
        k->index = i;
        for (int d = 0; d < SIM_MAX_DEVICES; d++)
            k->cfg[d] = k->proto.cfg;
        lib->kernels[lib->nkernels++] = k;
    }
    *out = lib;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                                   void **jitOptionsValues, unsigned int numJitOptions,
                                   CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                   unsigned int numLibraryOptions)
{
    if (!library || !code)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t t0 = sim_now_ns();
    CUresult rc = sim_jit_options(numJitOptions, jitOptions, jitOptionsValues);
    if (rc == CUDA_SUCCESS)
        rc = check_library_options(numLibraryOptions, libraryOptions, libraryOptionValues);
    if (rc != CUDA_SUCCESS)
        return rc;
    sim_lock();
    rc = sim_check_init();
    struct sim_library *lib = NULL;
    if (rc == CUDA_SUCCESS)
        rc = library_create(code, &lib);
    struct sim_ctx *ctx = NULL;
    if (rc == CUDA_SUCCESS && sim_current_ctx(&ctx) == CUDA_SUCCESS) {
        struct sim_module *m = NULL;
        rc = instance(lib, ctx, &m);
        if (rc != CUDA_SUCCESS)
            library_destroy(lib);
    }
    if (rc == CUDA_SUCCESS)
        *library = (CUlibrary)lib;
    sim_unlock();
    sim_jit_load_outputs(numJitOptions, jitOptions, jitOptionsValues, rc, t0);
    return rc;
}

SIM_API CUresult cuLibraryUnload(CUlibrary library)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_library *lib = rc == CUDA_SUCCESS ? find_library(library) : NULL;
    if (rc == CUDA_SUCCESS && !lib)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        library_destroy(lib);
    sim_unlock();
    return rc;
}

/* Entry for calls on a library handle: init, a live library. */
static CUresult enter_library(CUlibrary library, struct sim_library **out)
{
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    *out = find_library(library);
    return *out ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

static CUresult enter_kernel(CUkernel kernel, struct sim_kernel **out)
{
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    *out = find_kernel(kernel);
    return *out ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

SIM_API CUresult cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name)
{
    if (!pKernel || !name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_library *lib = NULL;
    CUresult rc = enter_library(library, &lib);
    if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_NOT_FOUND;
        for (size_t i = 0; i < lib->nkernels; i++) {
            if (strcmp(lib->kernels[i]->proto.name, name) == 0) {
                *pKernel = (CUkernel)lib->kernels[i];
                rc = CUDA_SUCCESS;
                break;
            }
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLibraryGetModule(CUmodule *pMod, CUlibrary library)
{
    if (!pMod)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_library *lib = NULL;
    struct sim_module *m = NULL;
    CUresult rc = enter_library(library, &lib);
    if (rc == CUDA_SUCCESS)
        rc = current_instance(lib, &m);
    if (rc == CUDA_SUCCESS)
        *pMod = (CUmodule)m;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLibraryGetKernelCount(unsigned int *count, CUlibrary lib)
{
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_library *l = NULL;
    CUresult rc = enter_library(lib, &l);
    if (rc == CUDA_SUCCESS)
        *count = (unsigned int)l->nkernels;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLibraryEnumerateKernels(CUkernel *kernels, unsigned int numKernels, CUlibrary lib)
{
    if (!kernels && numKernels)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_library *l = NULL;
    CUresult rc = enter_library(lib, &l);
    for (size_t i = 0; rc == CUDA_SUCCESS && i < l->nkernels && i < numKernels; i++)
        kernels[i] = (CUkernel)l->kernels[i];
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLibraryGetGlobal(CUdeviceptr *dptr, size_t *bytes, CUlibrary library, const char *name)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_library *lib = NULL;
    struct sim_module *m = NULL;
    CUresult rc = enter_library(library, &lib);
    if (rc == CUDA_SUCCESS) {
        /* look the name up first: an unknown name must not instantiate anything */
        rc = CUDA_ERROR_NOT_FOUND;
        for (size_t i = 0; i < lib->desc.nglobals; i++)
            if (strcmp(lib->desc.globals[i].name, name) == 0)
                rc = CUDA_SUCCESS;
    }
    if (rc == CUDA_SUCCESS)
        rc = current_instance(lib, &m);
    if (rc == CUDA_SUCCESS)
        rc = sim_module_global(m, name, dptr, bytes);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel)
{
    if (!pFunc)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_kernel *k = NULL;
    struct sim_func *f = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        rc = kernel_function(k, &f);
    if (rc == CUDA_SUCCESS)
        *pFunc = (CUfunction)f;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelGetName(const char **name, CUkernel hfunc)
{
    if (!name)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(hfunc, &k);
    if (rc == CUDA_SUCCESS)
        *name = k->proto.name;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelGetParamInfo(CUkernel kernel, size_t paramIndex, size_t *paramOffset, size_t *paramSize)
{
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_param_info(&k->proto, paramIndex, paramOffset, paramSize);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelGetAttribute(int *pi, CUfunction_attribute attrib, CUkernel kernel, CUdevice dev)
{
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_get_attr(&k->proto, &k->cfg[dev], attrib, pi);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev)
{
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_set_attr(&k->proto, &k->cfg[dev], attrib, val);
    if (rc == CUDA_SUCCESS) {
        for (size_t i = 0; i < k->lib->ninst; i++) {
            if (k->lib->inst[i].ctx->device != dev)
                continue;
            struct sim_func *f = sim_module_func(k->lib->inst[i].mod, k->index);
            sim_func_set_attr(f, &f->cfg, attrib, val); /* same shape as the proto: cannot fail */
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelSetCacheConfig(CUkernel kernel, CUfunc_cache config, CUdevice dev)
{
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS)
        rc = sim_func_check_cache_config(config);
    if (rc == CUDA_SUCCESS) {
        k->cfg[dev].cache_config = config;
        for (size_t i = 0; i < k->lib->ninst; i++)
            if (k->lib->inst[i].ctx->device == dev)
                sim_module_func(k->lib->inst[i].mod, k->index)->cfg.cache_config = config;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuKernelGetLibrary(CUlibrary *pLib, CUkernel kernel)
{
    if (!pLib)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_kernel *k = NULL;
    CUresult rc = enter_kernel(kernel, &k);
    if (rc == CUDA_SUCCESS)
        *pLib = (CUlibrary)k->lib;
    sim_unlock();
    return rc;
}
