/* fgn_log.c - the NVML shim's stderr logging ("fargpu-nvml: " lines, level from FARGPU_LOG like the stub:
 * error, warn (default), info, debug) and the one-time notice for exported entry points it does not implement. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fgn_internal.h"

static int log_level(void)
{
    static int level = -1;
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l >= 0)
        return l;
    const char *e = getenv("FARGPU_LOG");
    l = FGN_LOG_WARN;
    if (e && !strcmp(e, "error"))
        l = FGN_LOG_ERROR;
    else if (e && !strcmp(e, "info"))
        l = FGN_LOG_INFO;
    else if (e && !strcmp(e, "debug"))
        l = FGN_LOG_DEBUG;
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    return l;
}

int fgn_log_enabled(int level) { return level <= log_level(); }

void fgn_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fgn_vlog(level, fmt, ap);
    va_end(ap);
}

void fgn_vlog(int level, const char *fmt, va_list ap)
{
    if (level > log_level())
        return;
    static const char prefix[] = "fargpu-nvml: ";
    char line[1024];
    size_t p = sizeof prefix - 1;
    memcpy(line, prefix, p);
    int n = vsnprintf(line + p, sizeof line - p - 1, fmt, ap);
    if (n < 0)
        return;
    size_t len = p + ((size_t)n < sizeof line - p - 2 ? (size_t)n : sizeof line - p - 2);
    while (len > p && line[len - 1] == '\n') /* the caller's own line end: one is added below */
        len--;
    line[len++] = '\n';
    /* One write per line so lines from several threads do not interleave. */
    ssize_t w = write(2, line, len);
    (void)w;
}

nvmlReturn_t fgn_unsupported(const char *name, int *logged)
{
    if (!__atomic_exchange_n(logged, 1, __ATOMIC_RELAXED))
        fgn_log(FGN_LOG_WARN, "%s is not supported by the fargpu NVML shim; it returns NVML_ERROR_NOT_SUPPORTED", name);
    return NVML_ERROR_NOT_SUPPORTED;
}
