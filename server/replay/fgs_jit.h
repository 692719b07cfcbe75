/* fgs_jit.h — JIT options as the stub sends them (jit_options.c), shared by linking (link.c) and module and
 * library loads (module.c). */
#ifndef FGS_JIT_H
#define FGS_JIT_H

#include <cuda.h>
#include <stdint.h>

#include "fg_wire.h"
#include "fgs_session.h"

#define FGS_MAX_JIT_OPTIONS 64
#define FGS_MAX_JIT_LOG (1u << 20) /* bytes per log buffer */

typedef struct {
    uint32_t n;
    CUjit_option opt[FGS_MAX_JIT_OPTIONS];
    void *val[FGS_MAX_JIT_OPTIONS];
    char *buf[FGS_MAX_JIT_OPTIONS]; /* the log buffers this worker made (NULL for other options) */
    uint32_t cap[FGS_MAX_JIT_OPTIONS];
} fgs_jit;

/* "u32 n, n x (u32 option, u64 value)" into j, which owns the log buffers it made, also on failure (free them
 * with fgs_jit_free). FGS_PROTOCOL_ERROR when the bytes end early; CUDA_ERROR_NOT_SUPPORTED for an option that
 * names client memory (symbol names and addresses); CUDA_ERROR_INVALID_VALUE for an unknown option, a count
 * beyond FGS_MAX_JIT_OPTIONS or a log buffer or size given twice. */
CUresult fgs_jit_decode(fgs_session *S, fg_reader *r, fgs_jit *j);
void fgs_jit_free(fgs_jit *j);
/* What the driver wrote: "u32 count, count x (u32 index, u64 value slot, u32 n, n log bytes)". */
void fgs_jit_outputs(const fgs_jit *j, fg_writer *out);

#endif
