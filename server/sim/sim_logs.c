/* sim_logs.c - the driver's error log (cuLogsCurrent, cuLogsDumpToMemory, cuLogsDumpToFile): a small ring of the
 * messages the simulated device wrote for errors it returned (sim_log_error: its own cuLogs* refusals,
 * cuModuleGetFunction's unknown names, cuDeviceGetExecAffinitySupport's invalid arguments, every
 * cuMemBatchDecompressAsync), each "[time][thread][CUDA][E][entry point] message", the layout the CUDA programming
 * guide shows. An iterator is the number of messages written before it, so cuLogsCurrent gives the count so far
 * and a dump advances the caller's iterator to it. The ring holds the last RING messages; a dump from an iterator
 * older than that, or one whose buffer cannot hold every message from the iterator on, starts with a line saying
 * so and keeps the newest messages that fit. A buffer too small for any message: *size 0 and
 * CUDA_ERROR_INVALID_VALUE, as the header says. Callbacks (cuLogsRegisterCallback) are not simulated. */
#include "sim.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RING 64
#define MSG_MAX 240

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* its own lock: callers may hold sim_lock or not */
static char g_ring[RING][MSG_MAX];
static unsigned int g_written; /* messages written so far; message i lives in g_ring[i % RING] while i + RING > it */

void sim_log_error(const char *entry, const char *fmt, ...)
{
    char text[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&g_mu);
    snprintf(g_ring[g_written % RING], MSG_MAX, "[%02d:%02d:%02d.%03ld][%ld][CUDA][E][%s] %s", tm.tm_hour, tm.tm_min,
             tm.tm_sec, ts.tv_nsec / 1000000, (long)syscall(SYS_gettid), entry, text);
    g_written++;
    pthread_mutex_unlock(&g_mu);
}

SIM_API CUresult cuLogsCurrent(CUlogIterator *iterator_out, unsigned int flags)
{
    if (flags != 0) {
        sim_log_error("cuLogsCurrent", "flags must be 0");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!iterator_out) {
        sim_log_error("cuLogsCurrent", "iterator_out cannot be NULL");
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&g_mu);
    *iterator_out = g_written;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}

#define TRUNCATED "[CUDA] earlier log messages were dropped\n"

/* Writes the messages from *iterator (every held one without it) into buffer (cap bytes with the NUL), the
 * newest ones when not all fit; *len the bytes written without the NUL. Lock held. */
static CUresult dump(const CUlogIterator *iterator, char *buffer, size_t cap, size_t *len)
{
    unsigned int oldest = g_written > RING ? g_written - RING : 0;
    unsigned int from = iterator ? *iterator : 0;
    if (from > g_written)
        from = g_written;
    int dropped = from < oldest;
    if (dropped)
        from = oldest;
    *len = 0;
    if (from == g_written) {
        if (cap)
            buffer[0] = '\0';
        return CUDA_SUCCESS;
    }
    size_t need = 0;
    for (unsigned int i = from; i < g_written; i++)
        need += strlen(g_ring[i % RING]) + 1;
    unsigned int first = from;
    if (dropped || need + 1 > cap) { /* a notice first, then the newest messages that fit after it */
        dropped = 1;
        size_t room = cap > sizeof TRUNCATED ? cap - sizeof TRUNCATED : 0, used = 0; /* sizeof counts the NUL */
        first = g_written;
        while (first > from && used + strlen(g_ring[(first - 1) % RING]) + 1 <= room)
            used += strlen(g_ring[--first % RING]) + 1;
        if (first == g_written)
            return CUDA_ERROR_INVALID_VALUE;
    }
    size_t at = 0;
    if (dropped) {
        memcpy(buffer, TRUNCATED, sizeof TRUNCATED - 1);
        at = sizeof TRUNCATED - 1;
    }
    for (unsigned int i = first; i < g_written; i++) {
        size_t n = strlen(g_ring[i % RING]);
        memcpy(buffer + at, g_ring[i % RING], n);
        buffer[at + n] = '\n';
        at += n + 1;
    }
    buffer[at] = '\0';
    *len = at;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuLogsDumpToMemory(CUlogIterator *iterator, char *buffer, size_t *size, unsigned int flags)
{
    const char *why = flags     ? "flags must be 0"
                      : !buffer ? "buffer cannot be NULL"
                      : !size   ? "size cannot be NULL"
                                : NULL;
    if (why) {
        sim_log_error("cuLogsDumpToMemory", "%s", why);
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&g_mu);
    size_t len = 0;
    CUresult rc = dump(iterator, buffer, *size, &len);
    *size = len;
    if (rc == CUDA_SUCCESS && iterator)
        *iterator = g_written;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

SIM_API CUresult cuLogsDumpToFile(CUlogIterator *iterator, const char *pathToFile, unsigned int flags)
{
    const char *why = flags ? "flags must be 0" : !pathToFile ? "pathToFile cannot be NULL" : NULL;
    if (why) {
        sim_log_error("cuLogsDumpToFile", "%s", why);
        return CUDA_ERROR_INVALID_VALUE;
    }
    static char text[RING * MSG_MAX + sizeof TRUNCATED];
    FILE *f = fopen(pathToFile, "w");
    if (!f) {
        sim_log_error("cuLogsDumpToFile", "cannot open %s", pathToFile);
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&g_mu);
    size_t len = 0;
    CUresult rc = dump(iterator, text, sizeof text, &len); /* holds every message: never cut */
    if (rc == CUDA_SUCCESS && iterator)
        *iterator = g_written;
    int bad = rc == CUDA_SUCCESS && fwrite(text, 1, len, f) != len;
    pthread_mutex_unlock(&g_mu);
    bad |= fclose(f) != 0;
    return rc == CUDA_SUCCESS && bad ? CUDA_ERROR_INVALID_VALUE : rc;
}
