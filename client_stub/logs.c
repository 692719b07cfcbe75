/* logs.c — the driver's error log. The node's driver keeps it per process, and a session has a worker process of
 * its own, so the log a session reads holds the messages of the calls the node replayed for it (and of the
 * worker's own driver calls): cuLogsCurrent is a generic op, cuLogsDumpToMemory comes back with its text (worker:
 * server/replay/device.c), and cuLogsDumpToFile is that dump written into the file here, on the application's
 * host. Errors the stub answers itself (refused calls, arguments it checks) write no message. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define LOGS_CAP 65536u /* as the worker's bound: the driver's log holds at most 25600 bytes */

CUresult fgc_cuLogsDumpToMemory(CUlogIterator *iterator, char *buffer, size_t *size, unsigned int flags) {
    FGC_REQUIRE_INIT();
    size_t cap = size ? *size : 0, want = cap < LOGS_CAP ? cap : LOGS_CAP;
    size_t reply_cap = 4 + 4 + 1 + 8 + 4 + want;
    uint8_t *reply = NULL, given = (uint8_t)((iterator ? 1 : 0) | (buffer ? 2 : 0) | (size ? 4 : 0));
    CUresult r;
    fg_writer *w = fgc_begin_var(FG_OP_cuLogsDumpToMemory, reply_cap, &reply, &r);
    if (!w) return r;
    fg_put(w, &given, 1);
    fg_put_u32(w, iterator ? *iterator : 0);
    fg_put_u64(w, cap);
    fg_put_u32(w, flags);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(reply, reply_cap, &rd)) != CUDA_SUCCESS) return r;
    r = (CUresult)fg_get_u32(&rd);
    CUlogIterator it = fg_get_u32(&rd);
    uint8_t changed = 0;
    fg_get(&rd, &changed, 1);
    uint64_t written = fg_get_u64(&rd);
    uint32_t n = fg_get_u32(&rd);
    const uint8_t *text = fg_take(&rd, n);
    /* n bytes (the text and its NUL) fit the application's buffer, and a size given back lies inside it */
    if (rd.failed || !text || fg_reader_left(&rd) || n > want || (n && (!buffer || !size)) ||
        (changed && (!size || (written && written >= cap)))) {
        free(reply);
        return CUDA_ERROR_UNKNOWN;
    }
    if (n) {
        memcpy(buffer, text, n);
        buffer[n - 1] = '\0';
    }
    if (changed) *size = (size_t)written;
    if (iterator) *iterator = it;
    free(reply);
    return r;
}

/* The text of cuLogsDumpToMemory written into pathToFile on this host (created or emptied first). */
CUresult fgc_cuLogsDumpToFile(CUlogIterator *iterator, const char *pathToFile, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!pathToFile) return CUDA_ERROR_INVALID_VALUE;
    char *text = (char *)malloc(LOGS_CAP);
    if (!text) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t n = LOGS_CAP;
    CUlogIterator it = iterator ? *iterator : 0;
    CUresult r = fgc_cuLogsDumpToMemory(iterator ? &it : NULL, text, &n, flags);
    if (r == CUDA_SUCCESS) {
        FILE *f = fopen(pathToFile, "w");
        if (!f || fwrite(text, 1, n, f) != n) r = CUDA_ERROR_INVALID_VALUE;
        if (f && fclose(f) != 0) r = CUDA_ERROR_INVALID_VALUE;
    }
    if (r == CUDA_SUCCESS && iterator) *iterator = it;
    free(text);
    return r;
}
