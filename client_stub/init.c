/* init.c — cuInit (connects to the node server once per process), versions, error names, logging and
 * the one-time "not supported" report for calls fargpu does not implement yet. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static int log_level(void) {
    static int level = -1;
    if (level < 0) {
        const char *e = getenv("FARGPU_LOG");
        level = FGC_LOG_WARN;
        if (e && !strcmp(e, "error")) level = FGC_LOG_ERROR;
        else if (e && !strcmp(e, "info")) level = FGC_LOG_INFO;
        else if (e && !strcmp(e, "debug")) level = FGC_LOG_DEBUG;
        else if (e && !strcmp(e, "trace")) level = FGC_LOG_TRACE;
    }
    return level;
}

void fgc_log(int level, const char *fmt, ...) {
    if (level > log_level()) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    char out[1100];
    int m = snprintf(out, sizeof out, "fargpu: %.*s", n, line);
    if (m > 0) {
        ssize_t w = write(2, out, (size_t)m < sizeof out ? (size_t)m : sizeof out - 1);
        (void)w;
    }
}

CUresult fgc_unsupported(const char *name, int *logged) {
    if (!__atomic_exchange_n(logged, 1, __ATOMIC_RELAXED))
        fgc_log(FGC_LOG_WARN, "%s is not supported by fargpu yet; it returns CUDA_ERROR_NOT_SUPPORTED", name);
    return CUDA_ERROR_NOT_SUPPORTED;
}

void fgc_trace_failure(const char *name, CUresult r) {
    const char *en = fg_result_name((int)r);
    fgc_log(FGC_LOG_DEBUG, "%s -> %s (%d)", name, en ? en : "?", (int)r);
}

CUresult fgc_cuInit(unsigned int Flags) {
    if (Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_fgc.mu);
    if (!g_fgc.initialised) {
        g_fgc.init_result = fgc_connect();
        g_fgc.initialised = 1;
    }
    CUresult r = g_fgc.init_result;
    pthread_mutex_unlock(&g_fgc.mu);
    return r;
}

CUresult fgc_cuDriverGetVersion(int *driverVersion) {
    if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = CUDA_VERSION; /* the API level the stub implements (13000) */
    return CUDA_SUCCESS;
}

CUresult fgc_cuGetErrorName(CUresult error, const char **pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = fg_result_name((int)error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult fgc_cuGetErrorString(CUresult error, const char **pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = fg_result_string((int)error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
