/* fgc_jit.h — JIT options to the node and the driver's outputs back (jit_options.c). */
#ifndef FGC_JIT_H
#define FGC_JIT_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

#include "fg_wire.h"

#define FGC_MAX_JIT_OPTIONS 64
#define FGC_MAX_JIT_LOG (1u << 20) /* the node's cap per log buffer */

int fgc_jit_is_log(CUjit_option o);
/* The capacity of log buffer i: its size option's value (0 without one or without a buffer). */
uint32_t fgc_jit_log_cap(unsigned n, const CUjit_option *opt, void **val, unsigned i);
/* Checks an option array and, with a writer, appends "u32 n, n x (u32 option, u64 value)"; *reply_bytes (when
 * given) grows by what its outputs may take in a reply. */
CUresult fgc_jit_encode(fg_writer *w, unsigned n, const CUjit_option *opt, void **val, size_t *reply_bytes);
/* Applies "u32 count, count x (u32 index, u64 slot, u32 n, n bytes)" to an option array; caps[i] bounds log
 * buffer i (NULL: the array's own size options, as they were before any is written). -1 when malformed. */
int fgc_jit_apply(fg_reader *r, unsigned n, const CUjit_option *opt, void **val, const uint32_t *caps);

#endif
