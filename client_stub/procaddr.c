/* procaddr.c — cuGetProcAddress/_v2: resolve a driver entry point by name, requested CUDA version and
 * stream flags, from the generated table. (cuGetExportTable lives in export_tables.c.) */
#include <stdio.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_procaddr.h"

/* Returns 0 found, 1 no such symbol, 2 known but newer than cudaVersion. */
static int resolve(const char *symbol, int cudaVersion, cuuint64_t flags, void **pfn) {
    unsigned lo = 0, hi = fgc_procaddr_count;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (strcmp(fgc_procaddr_table[mid].name, symbol) < 0) lo = mid + 1;
        else hi = mid;
    }
    const fgc_procaddr_entry *best = NULL;
    int seen = 0;
    for (unsigned i = lo; i < fgc_procaddr_count && !strcmp(fgc_procaddr_table[i].name, symbol); i++) {
        seen = 1;
        if (fgc_procaddr_table[i].version <= cudaVersion) best = &fgc_procaddr_table[i];
    }
    if (!best) return seen ? 2 : 1;
    *pfn = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? best->fn_ptds : best->fn;
    return 0;
}

CUresult fgc_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                 CUdriverProcAddressQueryResult *symbolStatus) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    if (flags > (CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM))
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    int rc = resolve(symbol, cudaVersion, flags, pfn);
    if (symbolStatus)
        *symbolStatus = rc == 0   ? CU_GET_PROC_ADDRESS_SUCCESS
                        : rc == 1 ? CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
                                  : CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    if (rc) fgc_log(FGC_LOG_DEBUG, "cuGetProcAddress(\"%s\", %d, %llu): %s", symbol, cudaVersion,
                    (unsigned long long)flags, rc == 1 ? "no such symbol" : "version not sufficient");
    else fgc_log(FGC_LOG_TRACE, "cuGetProcAddress(\"%s\", %d, %llu) -> %p", symbol, cudaVersion,
                 (unsigned long long)flags, *pfn);
    return CUDA_SUCCESS;
}

CUresult fgc_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    int rc = resolve(symbol, cudaVersion, flags, pfn);
    return rc == 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}
