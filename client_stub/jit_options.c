/* jit_options.c — JIT options on their way to the node and the driver's outputs on their way back, shared by
 * linking (link.c) and module and library loads (module.c, library.c); server/replay/jit_options.c has the other
 * side. Options travel as (option, value) pairs: a scalar value as given, a log buffer as its capacity (the value
 * of the matching size option). Options whose value is an array of client pointers (global symbol names and
 * addresses, referenced kernel and variable names) are refused with CUDA_ERROR_NOT_SUPPORTED and a log line. The
 * answer names each output by its index: log text (capped at the application's buffer, NUL-terminated), or the
 * value slot the driver wrote (the bytes-filled sizes, the wall time as a float, threads per block). */
#include <string.h>

#include "fgc_internal.h"
#include "fgc_jit.h"

int fgc_jit_is_log(CUjit_option o) { return o == CU_JIT_INFO_LOG_BUFFER || o == CU_JIT_ERROR_LOG_BUFFER; }
static int is_out(CUjit_option o) {
    return o == CU_JIT_WALL_TIME || o == CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES || o == CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES ||
           o == CU_JIT_THREADS_PER_BLOCK;
}

uint32_t fgc_jit_log_cap(unsigned n, const CUjit_option *opt, void **val, unsigned i) {
    CUjit_option want =
        opt[i] == CU_JIT_INFO_LOG_BUFFER ? CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES : CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
    if (!val[i]) return 0;
    for (unsigned k = 0; k < n; k++)
        if (opt[k] == want) return (uint32_t)(uintptr_t)val[k];
    return 0;
}

CUresult fgc_jit_encode(fg_writer *w, unsigned n, const CUjit_option *opt, void **val, size_t *reply_bytes) {
    if (n && (!opt || !val)) return CUDA_ERROR_INVALID_VALUE;
    if (n > FGC_MAX_JIT_OPTIONS) {
        static int logged;
        return fgc_unsupported("a JIT option list longer than 64 entries", &logged);
    }
    for (unsigned i = 0; i < n; i++) {
        if ((unsigned)opt[i] >= CU_JIT_NUM_OPTIONS) return CUDA_ERROR_INVALID_VALUE;
        switch (opt[i]) {
        case CU_JIT_GLOBAL_SYMBOL_NAMES:
        case CU_JIT_GLOBAL_SYMBOL_ADDRESSES:
        case CU_JIT_REFERENCED_KERNEL_NAMES:
        case CU_JIT_REFERENCED_VARIABLE_NAMES: {
            static int logged;
            return fgc_unsupported("JIT options naming client symbols (CU_JIT_GLOBAL_SYMBOL_*, CU_JIT_REFERENCED_*)",
                                   &logged);
        }
        default: break;
        }
    }
    if (!w) return CUDA_SUCCESS;
    fg_put_u32(w, n);
    for (unsigned i = 0; i < n; i++) {
        uint64_t v = fgc_jit_is_log(opt[i]) ? fgc_jit_log_cap(n, opt, val, i) : (uint64_t)(uintptr_t)val[i];
        fg_put_u32(w, (uint32_t)opt[i]);
        fg_put_u64(w, v);
        if (reply_bytes) *reply_bytes += 16 + (fgc_jit_is_log(opt[i]) ? (v < FGC_MAX_JIT_LOG ? v : FGC_MAX_JIT_LOG) : 0);
    }
    return CUDA_SUCCESS;
}

int fgc_jit_apply(fg_reader *r, unsigned n, const CUjit_option *opt, void **val, const uint32_t *caps) {
    uint32_t own[FGC_MAX_JIT_OPTIONS]; /* the capacities before any size option is overwritten, whatever the order */
    if (!caps) {
        for (unsigned i = 0; i < n && i < FGC_MAX_JIT_OPTIONS; i++) own[i] = fgc_jit_is_log(opt[i]) ? fgc_jit_log_cap(n, opt, val, i) : 0;
        caps = own;
    }
    uint32_t count = fg_get_u32(r);
    for (uint32_t e = 0; e < count && !r->failed; e++) {
        uint32_t i = fg_get_u32(r);
        uint64_t slot = fg_get_u64(r);
        uint32_t len = fg_get_u32(r);
        const uint8_t *bytes = fg_take(r, len);
        if (r->failed || i >= n || i >= FGC_MAX_JIT_OPTIONS) return -1;
        if (fgc_jit_is_log(opt[i])) {
            uint32_t cap = caps[i];
            if (!cap || !val[i]) continue;
            size_t k = len < cap - 1 ? len : cap - 1;
            memcpy(val[i], bytes, k);
            ((char *)val[i])[k] = 0;
        } else if (is_out(opt[i])) {
            val[i] = (void *)(uintptr_t)slot;
        }
    }
    return r->failed ? -1 : 0;
}
