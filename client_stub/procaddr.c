/* procaddr.c — cuGetProcAddress/_v2 (resolve a driver entry point by name, requested CUDA version and
 * stream flags, from the generated table) and cuGetExportTable (the driver's private tables; served in a
 * later step — until then every table id is refused with CUDA_ERROR_NOT_SUPPORTED and logged once). */
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
    if (rc) fgc_log(FGC_LOG_DEBUG, "cuGetProcAddress(%s, %d): %s", symbol, cudaVersion,
                    rc == 1 ? "no such symbol" : "version not sufficient");
    return CUDA_SUCCESS;
}

CUresult fgc_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    int rc = resolve(symbol, cudaVersion, flags, pfn);
    return rc == 0 ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult fgc_cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
    if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
    *ppExportTable = NULL;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static CUuuid seen[64];
    static int nseen;
    pthread_mutex_lock(&mu);
    int known = 0;
    for (int i = 0; i < nseen; i++)
        if (!memcmp(&seen[i], pExportTableId, sizeof(CUuuid))) known = 1;
    if (!known && nseen < 64) seen[nseen++] = *pExportTableId;
    pthread_mutex_unlock(&mu);
    if (!known) {
        const unsigned char *b = (const unsigned char *)pExportTableId->bytes;
        fgc_log(FGC_LOG_WARN, "cuGetExportTable(%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x) "
                "is not supported by fargpu yet; it returns CUDA_ERROR_NOT_SUPPORTED",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    }
    return CUDA_ERROR_NOT_SUPPORTED;
}
