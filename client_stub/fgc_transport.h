/* fgc_transport.h — the stub's bulk-data transports (the transport room, beside conn.c and batch.c):
 *   shm.c   co-located clients: a sealed memfd region shared with the worker (page-locked host memory is carved
 *           from it, so pinned copies are DMA in place; pageable copies go through its staging ring)
 *   bulk.c  every other large copy: pipelined pieces striped over the session's connections
 * memory.c picks the path per copy. */
#ifndef FGC_TRANSPORT_H
#define FGC_TRANSPORT_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define FGC_BULK_MIN (256u * 1024u) /* copies from this size on move as bulk pieces (or through shared memory) */
CUresult fgc_hear_unasked(void); /* before a large copy: a CLOSE sent between calls resumes the session first */

/* doorbell.c. Post a synchronous batch frame (iov, total bytes) to the worker through the request mailbox (with
 * g_fgc.wmu held): 1 posted (its reply is awaited with fgc_db_wait), 0 not (the caller writes it to the socket).
 * fgc_db_wait, before a reply is read: 1 the reply is in the reply mailbox (conn.c's reads take it from there), 0
 * it comes over the socket, -1 a malformed reply. */
int fgc_db_post(const struct iovec *iov, int n, size_t total);
int fgc_db_wait(void);
void fgc_db_forget(void); /* a resume: no posted request is awaited any more */
void fgc_db_offer(void *region);     /* a new region: say whether this client will post (FARGPU_SHM_DOORBELL) */
void fgc_db_note_socket_frame(void); /* a frame went on the socket: the spinning worker looks there at once */

/* shm.c. After HELLO_OK offered shared memory: send the region (SCM_RIGHTS) and read the answer. Returns 0 (in
 * use or refused by the worker), -1 when the connection failed. */
int fgc_shm_handshake(int fd);
uint64_t fgc_shm_offer_bytes(void); /* the size the HELLO offers (FARGPU_SHM_MB; 0: no offer) */
int fgc_shm_on(void);
uint8_t *fgc_shm_base(void); /* the region while it is the session's transport, else NULL */
/* 1 when [p, p + n) lies in the region's client part (*off: its offset). */
int fgc_shm_find(const void *p, size_t n, uint64_t *off);
void *fgc_shm_alloc(size_t n); /* NULL: no region, or it is full */
int fgc_shm_free(void *p);     /* 0 freed, -1 not the region's */
void fgc_shm_detach(void);     /* a resumed session (another worker): the region is no transport any more */
/* Pageable copies through the staging ring, pipelined with the worker's DMA. sync: a synchronous copy (its error
 * returned); else on stream, as the driver runs an async copy of pageable memory: the bytes are taken (or
 * delivered) before the call returns, in stream order, errors come with a later sync call. */
CUresult fgc_shm_staged_htod(CUdeviceptr dst, const void *src, size_t n, CUstream stream, int sync);
CUresult fgc_shm_staged_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream stream, int sync);

/* Mapped host memory in the region: 1 when p is in it (*res is the call's result, *out the device address of the
 * same pages, which kernels read and write in place); 0 otherwise (managed.c mirrors it then). */
int fgc_shm_devptr(const void *p, CUdeviceptr *out, CUresult *res);

/* bulk.c. sync: a synchronous copy (the call returns once it is done, with its error); else async on stream
 * (the bytes are taken before the call returns; errors come with a later sync call). */
/* A resumed session: the data connections went to the old worker; the next bulk copy opens new ones. */
void fgc_bulk_forget_lanes(void);
CUresult fgc_bulk_htod(CUdeviceptr dst, const void *src, size_t n, CUstream stream, int sync);
/* Device→host: the call returns once the bytes are in dst (sync semantics, on stream; as the driver does for an
 * async copy to pageable memory too). */
CUresult fgc_bulk_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream stream);
/* Open the data connections now (before a large async device→host copy into page-locked memory, whose bytes a
 * later reply delivers over them); called without the connection lock. */
void fgc_bulk_open_lanes(void);
/* Staged async device→host copies a reply named with FG_LATER_BULK (SPEC.md, "Replies"): their bytes follow the
 * REPLY frame, in this order, the k-th piece on connection k mod C (g_fgc.mu held). dst NULL: read and dropped
 * (a copy already delivered). Returns 0; -1 a connection broke (errno; ETIMEDOUT: it stalled), the others are shut
 * down; -3 C names connections this stub does not have. */
typedef struct {
    void *dst;
    uint64_t id, n;
} fgc_bulk_dest;
int fgc_bulk_receive(const fgc_bulk_dest *d, size_t n, int C);

#endif
