/* fg_shm.h — the shared-memory transport's region (protocol/SPEC.md, "Shared memory"). A co-located client
 * creates a sealed memfd, passes it to its worker over the unix socket, and both map it. Its first page is a
 * header the worker writes progress counters into; the rest belongs to the client: page-locked host memory
 * (cuMemAllocHost / cuMemHostAlloc) and a staging ring for pageable copies. The worker registers the whole
 * region with the driver, so a copy naming an offset in it is a DMA straight from or to the client's pages.
 * Nothing the worker reads from the region is trusted: offsets come in records and are bounds-checked. */
#ifndef FG_SHM_H
#define FG_SHM_H

#include <stdint.h>

#define FG_SHM_MAGIC 0x314d485350474677ull /* "wFGPSHM1" */
#define FG_SHM_HEADER 4096u                /* the header page; client memory starts here */
#define FG_SHM_MIN (8u << 20)
#define FG_SHM_MAX (1ull << 40)

typedef struct {
    uint64_t magic;
    uint64_t htod_done;  /* seq of the last staged host→device chunk whose DMA finished (worker writes) */
    uint64_t dtoh_ready; /* seq of the last staged device→host chunk now in its slot (worker writes) */
} fg_shm_header;

/* FG_OP_SHM_HTOD: u64 dst, u64 stream, u64 off, u64 n, u32 flags, u64 seq
 * FG_OP_SHM_DTOH: u64 off, u64 src, u64 stream, u64 n, u32 flags, u64 seq
 * FG_OP_SHM_DEVPTR (sync): u64 off -> u64 device pointer */
#define FG_SHM_F_SYNC 1u   /* a synchronous copy (cuMemcpyHtoD/DtoH), else async on the stream */
#define FG_SHM_F_STAGED 2u /* a staging-ring chunk: publish seq in the header once the copy is done (an async
                            * one on its stream: once the stream reached and finished it) */

#endif
