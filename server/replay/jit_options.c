/* jit_options.c — JIT options for one session, as the stub sends them (client_stub/jit_options.c): "u32 n,
 * n x (u32 option, u64 value)", a scalar value as the application gave it, a log buffer as the capacity the
 * application has. The worker refuses what would hand the driver a client pointer (symbol name and address arrays),
 * makes each log buffer itself (at most 1 MiB) and clamps every log size to the buffer it made, so the driver never
 * writes outside worker memory. After the driver ran, the outputs go back: the log text, and the value slots the
 * driver wrote (log sizes, the wall time, threads per block). Used by linking (link.c) and by module and library
 * loads (module.c). */
#include <stdlib.h>
#include <string.h>

#include "fgs_jit.h"

void fgs_jit_free(fgs_jit *j) {
    for (uint32_t i = 0; i < j->n; i++) free(j->buf[i]);
    j->n = 0;
}

static int is_log(CUjit_option o) { return o == CU_JIT_INFO_LOG_BUFFER || o == CU_JIT_ERROR_LOG_BUFFER; }

/* Options whose value the driver writes. */
static int is_out(CUjit_option o) {
    return o == CU_JIT_WALL_TIME || o == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES || o == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES ||
           o == CU_JIT_THREADS_PER_BLOCK;
}

CUresult fgs_jit_decode(fgs_session *S, fg_reader *r, fgs_jit *j) {
    memset(j, 0, sizeof *j);
    uint32_t n = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (n > FGS_MAX_JIT_OPTIONS) return CUDA_ERROR_INVALID_VALUE;
    int seen_log[2] = {0, 0}, seen_size[2] = {0, 0};
    for (uint32_t i = 0; i < n; i++) {
        uint32_t o = fg_get_u32(r);
        uint64_t v = fg_get_u64(r);
        if (r->failed) return FGS_PROTOCOL_ERROR;
        if (o >= CU_JIT_NUM_OPTIONS) return CUDA_ERROR_INVALID_VALUE;
        CUjit_option opt = (CUjit_option)o;
        if (opt == CU_JIT_GLOBAL_SYMBOL_NAMES || opt == CU_JIT_GLOBAL_SYMBOL_ADDRESSES ||
            opt == CU_JIT_REFERENCED_KERNEL_NAMES || opt == CU_JIT_REFERENCED_VARIABLE_NAMES ||
            ((opt == CU_JIT_GLOBAL_SYMBOL_COUNT || opt == CU_JIT_REFERENCED_KERNEL_COUNT ||
              opt == CU_JIT_REFERENCED_VARIABLE_COUNT) && v)) {
            static int logged;
            if (!logged++) fgs_log(S, "JIT option %u (symbol names or addresses) is not forwarded; answering "
                                      "CUDA_ERROR_NOT_SUPPORTED", o);
            return CUDA_ERROR_NOT_SUPPORTED;
        }
        int info = opt == CU_JIT_INFO_LOG_BUFFER || opt == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES;
        if (is_log(opt) && seen_log[info]++) return CUDA_ERROR_INVALID_VALUE;
        if ((opt == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES || opt == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES) && seen_size[info]++)
            return CUDA_ERROR_INVALID_VALUE;
        j->opt[i] = opt;
        j->n = i + 1;
        if (is_log(opt)) {
            j->cap[i] = v > FGS_MAX_JIT_LOG ? FGS_MAX_JIT_LOG : (uint32_t)v;
            j->buf[i] = (char *)calloc(1, (size_t)j->cap[i] + 1);
            if (!j->buf[i]) return CUDA_ERROR_OUT_OF_MEMORY;
            j->val[i] = j->buf[i];
        } else {
            j->val[i] = (void *)(uintptr_t)v;
        }
    }
    /* A log size never exceeds the buffer made for it; without a buffer it is 0. */
    for (uint32_t i = 0; i < j->n; i++) {
        CUjit_option want = j->opt[i] == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES    ? CU_JIT_INFO_LOG_BUFFER
                            : j->opt[i] == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES ? CU_JIT_ERROR_LOG_BUFFER
                                                                              : CU_JIT_NUM_OPTIONS;
        if (want == CU_JIT_NUM_OPTIONS) continue;
        uint32_t cap = 0;
        for (uint32_t k = 0; k < j->n; k++)
            if (j->opt[k] == want) cap = j->cap[k];
        uint64_t v = (uint64_t)(uintptr_t)j->val[i];
        j->val[i] = (void *)(uintptr_t)(v < cap ? v : cap);
    }
    return CUDA_SUCCESS;
}

void fgs_jit_outputs(const fgs_jit *j, fg_writer *out) {
    uint32_t count = 0;
    for (uint32_t i = 0; i < j->n; i++) count += is_log(j->opt[i]) || is_out(j->opt[i]);
    fg_put_u32(out, count);
    for (uint32_t i = 0; i < j->n; i++) {
        if (is_log(j->opt[i])) {
            uint32_t len = (uint32_t)strnlen(j->buf[i], j->cap[i]);
            fg_put_u32(out, i);
            fg_put_u64(out, 0);
            fg_put_u32(out, len);
            fg_put(out, j->buf[i], len);
        } else if (is_out(j->opt[i])) {
            fg_put_u32(out, i);
            fg_put_u64(out, (uint64_t)(uintptr_t)j->val[i]);
            fg_put_u32(out, 0);
        }
    }
}
