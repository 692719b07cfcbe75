/* var_reply.c — calls whose reply has a variable length (up to a bound the caller names), read into a buffer of
 * their own: the buffer's allocation, the begin, the expect, the sync and the error paths, once for all of them
 * (their use: fgc_rpc.h). */
#include <stdlib.h>

#include "fgc_rpc.h"

fg_writer *fgc_begin_var(uint16_t op, size_t cap, uint8_t **reply, CUresult *err) {
    *reply = (uint8_t *)malloc(cap ? cap : 1);
    if (!*reply) {
        *err = CUDA_ERROR_OUT_OF_MEMORY;
        return NULL;
    }
    fg_writer *w = fgc_begin(op);
    if (!w) {
        free(*reply);
        *reply = NULL;
        *err = fgc_last_error();
    }
    return w;
}

CUresult fgc_sync_var_reply(uint8_t *reply, size_t cap, fg_reader *rd) {
    fgc_expect(reply, cap);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r != CUDA_SUCCESS) {
        free(reply);
        return r;
    }
    fg_reader_init(rd, reply, got);
    return CUDA_SUCCESS;
}
