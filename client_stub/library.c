/* library.c — the CUDA 12+ library API: cuLibraryLoadData/FromFile ship the image content-addressed
 * (image.c) and the server's driver loads it (lazily, as the driver does by default); cuLibraryGetKernel's
 * reply carries the kernel's parameter layout like cuModuleGetFunction's, and cuKernelGetFunction gives the
 * resulting function the same layout. JIT options go to the node's driver and its outputs come back into the
 * application's arrays (module.c, jit_options.c); library options are not forwarded (logged once):
 * CU_LIBRARY_BINARY_IS_PRESERVED is only a memory hint (the node keeps its own copy), and a host function and
 * data table names client memory the node cannot use. */
#include <stdio.h>
#include <stdlib.h>

#include "fgc_image.h"
#include "fgc_impl.h"
#include "fgc_internal.h"

static void note_options(const CUlibraryOption *lib, unsigned numLib) {
    static int logged;
    unsigned other = 0; /* CU_LIBRARY_BINARY_IS_PRESERVED is only a memory hint: the server keeps a copy */
    for (unsigned i = 0; i < numLib && lib; i++) other += lib[i] != CU_LIBRARY_BINARY_IS_PRESERVED;
    if (other && !__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
        fgc_log(FGC_LOG_WARN, "cuLibraryLoadData: library options are not forwarded; loading with the server "
                              "driver's defaults");
}

CUresult fgc_cuLibraryLoadData(CUlibrary *library, const void *code, CUjit_option *jitOptions,
                               void **jitOptionsValues, unsigned int numJitOptions, CUlibraryOption *libraryOptions,
                               void **libraryOptionValues, unsigned int numLibraryOptions) {
    FGC_REQUIRE_INIT();
    (void)libraryOptions;
    (void)libraryOptionValues;
    if (!library || !code) return CUDA_ERROR_INVALID_VALUE;
    note_options(libraryOptions, numLibraryOptions);
    const void *given = code;
    size_t n = fgc_image_size(&code);
    fgc_log(FGC_LOG_DEBUG, "cuLibraryLoadData: %zu bytes (%s)", n, given == code ? "direct" : "through a wrapper");
    if (n == 0) return CUDA_ERROR_INVALID_IMAGE;
    uint64_t id = 0;
    CUresult r = fgc_image_load_jit(FG_OP_cuLibraryLoadData, code, n, numJitOptions, jitOptions, jitOptionsValues, &id);
    if (r == CUDA_SUCCESS) *library = (CUlibrary)(uintptr_t)id;
    return r;
}

CUresult fgc_cuLibraryLoadFromFile(CUlibrary *library, const char *fileName, CUjit_option *jitOptions,
                                   void **jitOptionsValues, unsigned int numJitOptions,
                                   CUlibraryOption *libraryOptions, void **libraryOptionValues,
                                   unsigned int numLibraryOptions) {
    FGC_REQUIRE_INIT();
    if (!library || !fileName) return CUDA_ERROR_INVALID_VALUE;
    CUresult r;
    void *buf = fgc_read_image_file(fileName, &r);
    if (!buf) return r;
    r = fgc_cuLibraryLoadData(library, buf, jitOptions, jitOptionsValues, numJitOptions, libraryOptions,
                                       libraryOptionValues, numLibraryOptions);
    free(buf);
    return r;
}

CUresult fgc_cuLibraryGetKernel(CUkernel *pKernel, CUlibrary library, const char *name) {
    FGC_REQUIRE_INIT();
    if (!pKernel || !name) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuLibraryGetKernel);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, library);
    fgc_put_cstr(w, name);
    uint64_t id = 0;
    CUresult r = fgc_sync_with_layout(&id, name);
    if (r == CUDA_SUCCESS) *pKernel = (CUkernel)(uintptr_t)id;
    return r;
}

CUresult fgc_cuKernelGetFunction(CUfunction *pFunc, CUkernel kernel) {
    FGC_REQUIRE_INIT();
    if (!pFunc) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuKernelGetFunction);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, kernel);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync_memo(); /* a kernel's function in a context does not change until an unload */
    if (r != CUDA_SUCCESS) return r;
    if (fgc_layout_alias(fgc_handle_id(kernel), id) != 0) return CUDA_ERROR_INVALID_HANDLE;
    *pFunc = (CUfunction)(uintptr_t)id;
    return CUDA_SUCCESS;
}
