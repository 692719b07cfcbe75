/* fg_shm.h — the shared-memory transport's region (protocol/SPEC.md, "Shared memory"). A co-located client
 * creates a sealed memfd, passes it to its worker over the unix socket, and both map it. Its first page is a
 * header the worker writes progress counters into, and the two words of the doorbell; then come the doorbell's
 * request and reply mailboxes (SPEC.md, "Doorbell"); the rest belongs to the client: page-locked host memory
 * (cuMemAllocHost / cuMemHostAlloc) and a staging ring for pageable copies. The worker registers the whole
 * region with the driver, so a copy naming an offset in it is a DMA straight from or to the client's pages.
 * Nothing the worker reads from the region is trusted: offsets come in records and are bounds-checked, and a
 * request is copied out of its mailbox once before it is decoded. */
#ifndef FG_SHM_H
#define FG_SHM_H

#include <stddef.h>
#include <stdint.h>

#define FG_SHM_MAGIC 0x314d485350474677ull /* "wFGPSHM1" */
#define FG_SHM_MBOX (256u << 10)           /* each doorbell mailbox: a whole frame, header included */
#define FG_SHM_REQ_OFF 4096u               /* the request mailbox (the client writes a BATCH frame) */
#define FG_SHM_REP_OFF (FG_SHM_REQ_OFF + FG_SHM_MBOX) /* the reply mailbox (the worker writes a REPLY frame) */
#define FG_SHM_HEADER (FG_SHM_REP_OFF + FG_SHM_MBOX)  /* the header page and the mailboxes; client memory starts here */
#define FG_SHM_MIN (8u << 20)
#define FG_SHM_MAX (1ull << 40)

typedef struct {
    uint64_t magic;
    uint64_t htod_done;  /* seq of the last staged host→device chunk whose DMA finished (worker writes) */
    uint64_t dtoh_ready; /* seq of the last staged device→host chunk now in its slot (worker writes) */
    uint32_t db_wanted;  /* set by the client before it sends the region: it posts (FARGPU_SHM_DOORBELL) */
    uint32_t pad0a;
    uint64_t sock_frames; /* the client counts every frame as it begins to write it on the socket (a hint: the
                           * worker's spin turns to the socket when it moves, and looks there every 20 µs anyway) */
    uint8_t pad0[24];
    uint32_t db_worker; /* the request side of the doorbell: FG_DB_OFF, IDLE, POSTED or TAKEN (own cache line) */
    uint32_t worker_cpu; /* the CPU the worker last spun on, + 1 (0: unknown) */
    uint8_t pad1[56];
    uint32_t db_client; /* the reply side: FG_DB_WAITING, ASLEEP, READY or ON_SOCKET */
    uint8_t pad2[60];
} fg_shm_header;

/* The doorbell's words, changed only by compare-and-swap where both sides may move them (SPEC.md, "Doorbell").
 * db_worker: OFF (0, as the region is created: the worker is not watching, requests go over the socket), IDLE (the
 * worker spins on the mailbox; the client may post: IDLE -> POSTED), POSTED, TAKEN (the worker copied it out).
 * The worker goes to sleep with IDLE -> OFF; a post that finds OFF goes over the socket instead. A worker spins
 * only for a client that set db_wanted. The client stops spinning for a reply when the worker last ran on its own
 * CPU (worker_cpu): there its spin would only keep the worker from running.
 * db_client: WAITING (set before a post; the client spins on the reply mailbox), then the first of the worker's
 * WAITING -> READY (the reply is in its mailbox) or WAITING -> ON_SOCKET (it comes over the socket) and the
 * client's WAITING -> ASLEEP (it stopped spinning and reads the socket: the worker sends the reply there). */
enum { FG_DB_OFF = 0, FG_DB_IDLE = 1, FG_DB_POSTED = 2, FG_DB_TAKEN = 3 };
_Static_assert(offsetof(fg_shm_header, db_worker) == 64 && offsetof(fg_shm_header, db_client) == 128,
               "the doorbell words each have a cache line");
_Static_assert(sizeof(fg_shm_header) <= FG_SHM_REQ_OFF, "the header fits its page");
enum { FG_DB_NONE = 0, FG_DB_WAITING = 1, FG_DB_ASLEEP = 2, FG_DB_READY = 3, FG_DB_ON_SOCKET = 4 };

/* FG_OP_SHM_HTOD: u64 dst, u64 stream, u64 off, u64 n, u32 flags, u64 seq
 * FG_OP_SHM_DTOH: u64 off, u64 src, u64 stream, u64 n, u32 flags, u64 seq
 * FG_OP_SHM_DEVPTR (sync): u64 off -> u64 device pointer */
#define FG_SHM_F_SYNC 1u   /* a synchronous copy (cuMemcpyHtoD/DtoH), else async on the stream */
#define FG_SHM_F_STAGED 2u /* a staging-ring chunk: publish seq in the header once the copy is done (an async
                            * one on its stream: once the stream reached and finished it) */

#endif
