/* fgs_session.h — one client session inside a replay worker: the dlopen'ed driver, the per-session handle
 * tables (virtual ids the client sees ↔ real driver handles), VRAM accounting against the lease quota,
 * and the async device→host copies staged until they are delivered: with the next reply, or earlier, with the
 * RUN message of a host function after them on their stream (memory.c, callbacks.c). */
#ifndef FGS_SESSION_H
#define FGS_SESSION_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fg_handles.h"
#include "fg_ops.h"
#include "fg_wire.h"
#include "fgs_api.h"

#define FGS_EXPORT __attribute__((visibility("default")))

/* Dispatch results outside CUresult's range. */
#define FGS_PROTOCOL_ERROR ((CUresult)0x7ffffff0)
#define FGS_UNKNOWN_OP ((CUresult)0x7ffffff1)

typedef struct {
    void **real; /* index -> real handle; NULL: free slot */
    uint32_t n, cap;
    uint32_t *free_list;
    uint32_t n_free;
    uint32_t *by_real; /* functions and kernels: real handle -> index + 1 (open addressing; 0 empty) */
    uint32_t by_real_cap, by_real_n;
} fgs_table;

typedef struct {
    CUdeviceptr ptr;
    size_t size;     /* as requested */
    size_t mapped;   /* rounded to the granularity */
    CUmemGenericAllocationHandle handle; /* 0 while paged out (the VA reservation stays) */
    int dev;
    int paged;          /* its contents are in the page store (paging.c), not on the device */
    uint64_t page_off;  /* where, in the host pool extent or the spill file */
    int client_vmm;     /* a handle the client created and mapped (vmm.c): cuMemFree refuses it */
    uint64_t peers;     /* other devices (bit = ordinal) granted access to it (peer.c); a page-in grants them again */
} fgs_alloc;

/* A shared ledger of VRAM charges, one slot per session (ledger.c). */
typedef struct fgs_ledger {
    int fd;
    uint8_t *base;
    size_t len;
    uint32_t slots, slot;
    uint64_t quota;    /* per GPU when devices > 0, else for all of them together */
    uint32_t devices;  /* counters per slot: one per GPU of the lease (0: one for all) */
    size_t stride;     /* bytes per slot */
} fgs_ledger;

/* A staged async device→host copy. Ids count the session's cuMemcpyDtoHAsync records from 0 (the stub counts
 * the same way); S->later is in id order and guarded by memory.c's lock, since trampolines take entries from
 * the driver's callback threads. */
typedef struct {
    void *data;      /* NULL: the copy failed (nothing to deliver: length 0 on the wire) */
    size_t n;
    CUstream stream;
    uint64_t id;
    int claimed;     /* a trampoline is sending it with a RUN message; it leaves S->later at DONE */
    int bulk;        /* send_reply: its bytes follow the REPLY over the bulk path (bulk.c, fgs_bulk_deliver) */
    struct fgs_pinblk *pin; /* data is in this page-locked staging buffer (pinstage.c); NULL: malloc'd */
    int settled;     /* its stream was waited for since: the copy is complete (fgs_later_settle) */
} fgs_later;

/* A claimed copy, as a trampoline sends it. */
typedef struct {
    uint64_t id;
    const void *data;
    size_t n;
} fgs_later_ref;

typedef struct fgs_session {
    const fgs_api *api;
    void *dl;
    uint64_t salt; /* per-session bits in every virtual id */
    fgs_table tables[FGH_LIMIT];

    fgs_alloc *allocs;
    size_t n_allocs, cap_allocs;
    uint64_t vram_used, vram_quota; /* what this session has charged; the quota (0: none) */
    struct fgs_ledger *ledger;      /* the lease's ledger shared with its other sessions (ledger.c); NULL: none */
    struct fgs_pager *pager;        /* paging state (paging.c); NULL: paging not set up */
    uint64_t last_active_ns;        /* monotonic time the last batch finished */
    uint64_t ctx_charge;            /* bytes charged per created context */
    void *created_ctx[64];          /* contexts created by cuCtxCreate (charged), until destroyed */
    size_t n_created_ctx;
    struct fgs_green {              /* green contexts (charged like a created context), until destroyed (green.c) */
        void *green;
        int dev;
    } green[64];
    size_t n_green;

    fgs_later *later;
    size_t n_later, cap_later, later_bytes;
    uint64_t later_next; /* id of the next cuMemcpyDtoHAsync record (touched by the replay thread only) */
    int later_closed;    /* the session is closing: a failed trampoline frees what it claimed */

    void *scratch;
    size_t scratch_cap;

    /* module/library images (image.c): the upload in progress, and the loaded ones kept until the end */
    uint8_t staging_sha[32];
    uint8_t *staging_data;
    uint64_t staging_size, staging_have;
    uint8_t **images;
    size_t n_images, cap_images;
    uint64_t image_cache_hits;

    /* module and library globals the client was told about: device memory copies may touch (memory.c) */
    fgs_alloc *globals;
    size_t n_globals, cap_globals;

    struct fgs_output *output; /* device printf capture (output.c); NULL: none */

    int cb_fd; /* the client's callback connection (callbacks.c); -1: none */
    int cb_failed; /* a host function could not run in the client: reported as a deferred error */
    struct fgs_callback *callbacks; /* host functions the driver may call (callbacks.c), kept to the end */
    uint32_t max_frame;
    char log_prefix[64];
    struct fgs_vmm *vmm; /* the client's own VMM reservations and handles (vmm.c); NULL: none yet */
    struct fgs_journal *journal; /* what created the session's handles and lasting state (journal.c) */
    uint32_t applied_seq;        /* the last batch applied: a parked session resumes after it (park.c) */
    int client_fd;               /* the client's connection while fgs_serve runs; -1: none */
    uint8_t *ahead;              /* bytes of client_fd read ahead of the frame being served (fgs_client_read) */
    size_t ahead_at, ahead_end;
    uint64_t sock_frames_read;   /* frames read from client_fd (the doorbell compares the client's count) */
    uint64_t served_batches, served_records, served_busy_ns; /* fgs_serve's work: logged when it returns */
    uint64_t arena_next, arena_end; /* where cuMemAlloc asks for its next address (memory.c); 0: anywhere */
    struct fgs_shm *shm;   /* the co-located client's shared-memory region (shm.c); NULL: none */
    struct fgs_bulk *bulk; /* the pinned staging ring and data connections for bulk copies (bulk.c) */
    struct fgs_pinstage *pinstage; /* page-locked staging buffers of async device→host copies (pinstage.c) */
    struct fgs_reattach *reattach; /* a client coming back after its connection dropped (reattach.c) */
    struct fgs_borrow *borrowed; /* child graphs' ids, owned by their parents' nodes (graph_query.c) */
    size_t n_borrowed, cap_borrowed;
    uint32_t n_texsurf; /* texture and surface objects alive (arrays.c): their values are the driver's own */
    struct fgs_vablock *vablock; /* the address block cuMemAlloc carves from (va_block.c); NULL: none yet */
} fgs_session;

int fgs_handle_get(fgs_session *S, int kind, uint64_t id, void **real);
int fgs_handle_kind_of(fgs_session *S, uint64_t id); /* a live id of this session: its kind; else 0 */
uint64_t fgs_handle_id_of(fgs_session *S, int kind, const void *real); /* 0: none */
uint64_t fgs_handle_put_at(fgs_session *S, int kind, uint64_t want, void *real);
void fgs_handles_reindex(fgs_session *S);
/* The creation journal (journal.c): every op that created a handle or set lasting state, kept until what it made
 * is destroyed, so that a parked session can be rebuilt with the same ids (park.c). */
int fgs_journal_open(fgs_session *S);
void fgs_journal_free(fgs_session *S);
uint64_t fgs_journal_forced(fgs_session *S, int kind); /* restoring: the id the next handle must get; 0: none */
void fgs_journal_created(fgs_session *S, uint64_t id);
void fgs_journal_forget(fgs_session *S, uint64_t id);
void fgs_journal_note(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res,
                      const fg_writer *out, size_t out_before);
uint64_t fgs_handle_add(fgs_session *S, int kind, void *real);
void fgs_handle_remove(fgs_session *S, int kind, uint64_t id);
void *fgs_scratch(fgs_session *S, size_t n);
const char *fgs_get_cstr(fg_reader *r);
void fgs_log(fgs_session *S, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The driver lacks a generic op's entry point: log once, answer CUDA_ERROR_NOT_SUPPORTED. */
CUresult fgs_missing(fgs_session *S, const char *name);
/* The worker's own driver calls (waiting for staged copies' streams, registering its staging memory) are not the
 * application's: while they run, this thread's capture mode is relaxed, so that a global-mode stream capture the
 * application has under way does not count them as unsafe calls made during it. fgs_relax returns whether the mode
 * was exchanged; fgs_unrelax gives the thread its mode back. */
static inline int fgs_relax(fgs_session *S, CUstreamCaptureMode *saved) {
    *saved = CU_STREAM_CAPTURE_MODE_RELAXED;
    return S->api->cuThreadExchangeStreamCaptureMode && S->api->cuThreadExchangeStreamCaptureMode(saved) == 0;
}
static inline void fgs_unrelax(fgs_session *S, int relaxed, CUstreamCaptureMode saved) {
    if (relaxed) S->api->cuThreadExchangeStreamCaptureMode(&saved);
}
CUresult fgs_dispatch(fgs_session *S, unsigned op, fg_reader *r, fg_writer *out);
CUresult fgs_set_ctx(fgs_session *S, fg_reader *r);
void fgs_memory_release_all(fgs_session *S);
/* memory.c: one session allocation of size bytes on device ordinal dev (VMM-backed, charged to the quota), and its
 * release without waiting (the caller knows no queued work uses it); the mapped size of the allocation at p (0:
 * none). */
CUresult fgs_memory_alloc(fgs_session *S, int dev, uint64_t size, CUdeviceptr *ptr, size_t *mapped);
CUresult fgs_memory_free_now(fgs_session *S, CUdeviceptr p);
size_t fgs_memory_mapped_at(fgs_session *S, CUdeviceptr p);
void fgs_memory_peer(fgs_session *S, CUdeviceptr p, int dev, int on); /* peer device dev may reach it (or not) */
/* Stream-ordered allocation and memory pools, emulated over session allocations (mempool.c, mempool_blocks.c).
 * _free: cuMemFree of p: 1 handled (a block of a pool's chunk, released after a context synchronisation), 0 memory.c
 * frees it (the pool no longer counts it), -1 invalid (freed already with cuMemFreeAsync, or a chunk's base).
 * _range: cuMemGetAddressRange of p inside a pool's chunk: 1 a block (base, size), -1 none there, 0 not in a chunk.
 * _reap after each batch (last_op: the batch's last record, whose args are given: a synchronisation there releases
 * what it waited for). _drain waits for every pending cuMemFreeAsync and releases (before a context goes). _close at
 * the session's end, before its allocations go. */
int fgs_mempool_free(fgs_session *S, CUdeviceptr p);
int fgs_mempool_range(fgs_session *S, CUdeviceptr p, uint64_t *base, uint64_t *size);
int fgs_mempool_holds(fgs_session *S, CUdeviceptr p); /* p is memory of a pool (not legacy-IPC capable, as natively) */
void fgs_mempool_reap(fgs_session *S, unsigned last_op, const uint8_t *args, size_t len);
void fgs_capture_watch(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res); /* capture_watch.c */
void fgs_capture_watch_before(fgs_session *S, unsigned op);
void fgs_texsurf_note(fgs_session *S, unsigned op, CUresult res); /* arrays.c */
void fgs_capture_began(uint64_t sid); /* capture.c: stream sid began a capture into a graph of its own */
void fgs_mempool_drain(fgs_session *S);
void fgs_mempool_close(fgs_session *S);
/* Parking (park.c): which pool holds each allocation, and pools' high watermarks, written after the events and read
 * back (0, or -1 with err filled: the restore fails). */
void fgs_mempool_put(fgs_session *S, fg_writer *w);
int fgs_mempool_get(fgs_session *S, fg_reader *r, char *err, size_t errlen);
/* The client's VMM mappings, handles and reservations (vmm.c): released before fgs_memory_release_all. */
void fgs_vmm_close(fgs_session *S);
/* arrays.c: destroy the CUDA arrays the session still holds (at its end). */
void fgs_arrays_close(fgs_session *S);
/* userobj.c: no user object destructor reaches the session from now on (at its end, before the callbacks go). */
void fgs_userobj_close(fgs_session *S);
/* link.c: destroy the JIT link states the session still holds (at its end). */
void fgs_links_close(fgs_session *S);
/* memory.c: [p, p + n) lies in one of this session's allocations or module globals. */
int fgs_device_range_ok(fgs_session *S, uint64_t p, uint64_t n);
/* VRAM accounting against the lease's quota (ledger.c): charge fails with CUDA_ERROR_OUT_OF_MEMORY above it. */
CUresult fgs_charge(fgs_session *S, uint64_t bytes); /* on the current context's device */
/* On device ordinal `dev`: with a per-GPU ledger the quota is per GPU (CUDA_ERROR_INVALID_DEVICE for an ordinal the
 * session does not have). Uncharge with the same ordinal. */
CUresult fgs_charge_dev(fgs_session *S, int dev, uint64_t bytes);
void fgs_uncharge_dev(fgs_session *S, int dev, uint64_t bytes);
/* green.c: destroys the session's green contexts and drops the contexts converted from them (session end). */
void fgs_green_close(fgs_session *S);
uint64_t fgs_quota_left_dev(fgs_session *S, int dev);
int fgs_current_device(fgs_session *S);
void fgs_uncharge(fgs_session *S, uint64_t bytes);
uint64_t fgs_quota_left(fgs_session *S); /* UINT64_MAX: no quota */
void fgs_ledger_close(fgs_session *S);
fgs_ledger *fgs_ledger_open(int fd, unsigned int slot);
int fgs_ledger_try_charge(fgs_ledger *L, uint64_t bytes); /* 0, or -1 above the quota */
int fgs_ledger_try_charge_dev(fgs_ledger *L, int dev, uint64_t bytes);
void fgs_ledger_uncharge_dev(fgs_ledger *L, int dev, uint64_t bytes);
uint64_t fgs_ledger_sum_dev(const fgs_ledger *L, int dev);
void fgs_ledger_uncharge(fgs_ledger *L, uint64_t bytes);
uint64_t fgs_ledger_sum(const fgs_ledger *L);
void fgs_ledger_free(fgs_ledger *L);
/* Paging (paging.c). Resident charges go to the node's resident ledger; when it is full the worker asks the
 * node agent to make room, bounded in time. */
CUresult fgs_resident_charge(fgs_session *S, uint64_t bytes);
void fgs_resident_uncharge(fgs_session *S, uint64_t bytes);
int fgs_is_paged(const fgs_session *S);
CUresult fgs_page_in(fgs_session *S);
/* Before any CUDA call of a session the agent took to the deeper level (a driver process checkpoint): asks the
 * agent to restore it and waits, bounded. 0: CUDA may be called; -1: it cannot come back. */
int fgs_pager_wake(fgs_session *S);
/* hostpool.c: the node's host page pool as host-NUMA driver memory in slabs; an extent's slabs imported and each
 * mapped whole, at consecutive addresses, for one step */
CUresult fgs_hostpool_map(fgs_session *S, const int *fds, size_t n, size_t slab, CUdeviceptr *va);
void fgs_hostpool_unmap(fgs_session *S, CUdeviceptr va, size_t n, size_t slab);
CUresult fgs_hostpool_copy(fgs_session *S, CUstream stream, CUdeviceptr pool, int out);
/* A control line from the node agent (without its newline). Returns 1 for "close" (reason in why), else 0. */
int fgs_control_line(fgs_session *S, const char *line, char *why, size_t why_len);
void fgs_pager_close(fgs_session *S);
uint64_t fgs_now_ns(void);
void fgs_pager_attach_ctl(fgs_session *S, int ctl_fd); /* where "need" waits for the agent's answer */
void fgs_note_global(fgs_session *S, CUdeviceptr p);
int fgs_pager_ctl_fd(fgs_session *S);
void fgs_pager_status(fgs_session *S, const char *line); /* a status line to the agent */
void fgs_arena_init(fgs_session *S);
/* The session's address block (va_block.c): take an allocation's range (0, or -1: none, ask the driver), give one
 * back (1: it was the block's; 0: it is a range of its own), adopt a block reserved again on restore, claim an old
 * allocation's range out of it, where it is (0, 0: none), and close it. */
int fgs_va_take(fgs_session *S, uint64_t size, uint64_t gran, CUdeviceptr *ptr);
int fgs_va_give(fgs_session *S, CUdeviceptr ptr, uint64_t size);
int fgs_va_adopt(fgs_session *S, CUdeviceptr base, uint64_t size);
int fgs_va_claim(fgs_session *S, CUdeviceptr ptr, uint64_t size);
void fgs_va_where(const fgs_session *S, uint64_t *base, uint64_t *size);
void fgs_va_close(fgs_session *S);
int fgs_pager_adopt_spill(fgs_session *S, const char *path, uint64_t bytes);
int fgs_pager_adopt_host(fgs_session *S, uint64_t off, uint64_t len, uint64_t bytes);
/* Parking (park.c): a "park DIR" control line writes the session's state under DIR and waits for "park-commit"
 * (returns 1: the session closes, parked) or "park-abort" (returns 0: it goes on). */
int fgs_park_control(fgs_session *S, const char *line, char *why, size_t why_len);
/* park_events.c: recorded events and their timings across a park. _note and _forget follow the journal; _put and
 * _get write and read them in the parked state; _answer answers cuEventElapsedTime between two events restored
 * with their times (1: answered in *res and out; 0: dispatch it). */
void fgs_events_note(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res);
void fgs_events_forget(fgs_session *S, uint64_t id);
void fgs_events_put(fgs_session *S, fg_writer *w);
int fgs_events_get(fgs_session *S, fg_reader *r, char *err, size_t errlen);
int fgs_park_place(fgs_session *S, uint64_t block, uint64_t block_size, fgs_alloc *wants, uint32_t n, char *err,
                   size_t errlen); /* park_place.c */
int fgs_events_answer(fgs_session *S, unsigned op, const uint8_t *args, size_t len, fg_writer *out, CUresult *res);
/* A module global that moved when its session was restored: where it is now (p itself when it did not). */
uint64_t fgs_park_xlate(fgs_session *S, uint64_t p, uint64_t n);
/* ... and in kernel parameter buffers and memset destinations (park.c; no-ops unless a global moved). */
void fgs_park_xlate_params(fgs_session *S, uint8_t *buf, size_t n);
void fgs_park_fix_record(fgs_session *S, unsigned op, uint8_t *args, size_t len);
/* Peer access between the session's GPUs (peer.c). A new cuMemAlloc allocation, or one mapped again by a page-in,
 * gets the access the devices that enabled peer access to its device (and a->peers) must have. */
void fgs_peer_grant(fgs_session *S, fgs_alloc *a);
int fgs_peer_any(void); /* peer access is enabled between some of the session's GPUs (parking does not restore it) */
/* The client set access on [p, p + n) (cuMemSetAccess): its mappings there remember which peers may reach them. */
/* CUDA IPC between the sessions of one lease (ipc.c, brokered by the node: server/ipc_broker.py). */
int fgs_ipc_range_ok(fgs_session *S, uint64_t p, uint64_t n); /* inside memory opened from another session */
int fgs_ipc_active(fgs_session *S);                           /* it shares memory: paging and parking refuse it */
void fgs_ipc_forget(fgs_session *S, uint64_t ptr);            /* cuMemFree of an exported allocation */
void fgs_ipc_close(fgs_session *S);                           /* at the session's end */
CUresult fgs_vmm_real(fgs_session *S, uint64_t id, CUmemGenericAllocationHandle *real, size_t *size, int *dev);
uint64_t fgs_vmm_adopt(fgs_session *S, CUmemGenericAllocationHandle real, size_t size, int dev);
void fgs_vmm_mark_shared(fgs_session *S, uint64_t id);
int fgs_vmm_shared(fgs_session *S);
void fgs_peer_note_access(fgs_session *S, uint64_t p, uint64_t n, const CUmemAccessDesc *d, size_t count);
/* Must run after the device is idle (the trampolines the driver may still call use these). */
void fgs_callbacks_close(fgs_session *S);
/* callbacks.c: the trampoline and argument of a graph host node whose function is the client's `cookie`. */
CUresult fgs_callback_for_graph(fgs_session *S, uint64_t cookie, CUhostFn *fn, void **arg);
/* callbacks.c: the client's cookie of a graph host node's (function, argument) from the driver; 0: not one. */
uint64_t fgs_callback_cookie_of(fgs_session *S, CUhostFn fn, void *arg);
/* graph_query.c: child graphs handed out by cuGraphChildGraphNodeGetGraph belong to their parents' nodes. */
int fgs_graph_borrowed(fgs_session *S, uint64_t id);
int fgs_graph_borrow(fgs_session *S, uint64_t id, uint64_t parent); /* 0, or -1 when out of memory */
void fgs_graph_parent_gone(fgs_session *S, uint64_t parent);
void fgs_graph_borrowed_close(fgs_session *S);
void fgs_globals_forget(fgs_session *S);
void fgs_later_free_all(fgs_session *S);
/* For send_reply: the distinct streams of the staged copies that have data (malloc'ed; *n 0 and NULL when
 * none; -1 when out of memory), then, once those streams are idle, every unclaimed copy, moved out (malloc'ed
 * array, freed with fgs_later_free_list; -1 when out of memory, leaving them staged). */
int fgs_later_streams(fgs_session *S, CUstream **streams, size_t *n);
int fgs_later_take(fgs_session *S, fgs_later **list, size_t *n);
void fgs_later_free_list(fgs_later *list, size_t n);
/* Waits for the streams of staged copies that may still be running (not under the lock): those in page-locked
 * memory (and with pageable_too those in malloc'd memory too), on every stream or (one) on `stream` alone. Those
 * whose stream synchronised are marked settled: send_reply no longer waits for their stream (which may be gone). */
void fgs_later_settle(fgs_session *S, int one, CUstream stream, int pageable_too);
/* pinstage.c: page-locked staging. fgs_stage_get: a buffer of n bytes for a copy on stream s (*pin: its pooled
 * buffer; NULL: malloc'd, as beyond the cap or under capture); NULL when out of memory. fgs_stage_put gives it
 * back (freed, or reused: only once the copy completed). fgs_stage_count: a copy was enqueued into it.
 * fgs_stage_drain: a context may go (copies into the pool settle; buffers are registered again at their next
 * use). fgs_stage_close: the session ends (after every staged copy was given back or settled). */
struct fgs_pinblk;
void *fgs_stage_get(fgs_session *S, size_t n, CUstream s, struct fgs_pinblk **pin);
void fgs_stage_put(struct fgs_pinblk *b, void *data);
void fgs_stage_count(fgs_session *S, struct fgs_pinblk *b);
void fgs_stage_drain(fgs_session *S);
void fgs_stage_trim(fgs_session *S); /* paged out: the idle buffers are given back */
void fgs_stage_close(fgs_session *S);
/* For a trampoline: claim the unclaimed copies on `stream` with id < upto (they finished: the stream reached
 * the host function after them). Returns how many (*refs malloc'ed). Release them after DONE (delivered: freed)
 * or after a failed RUN (not delivered: left for the next reply). */
size_t fgs_later_claim(fgs_session *S, CUstream stream, uint64_t upto, fgs_later_ref **refs);
void fgs_later_release(fgs_session *S, const fgs_later_ref *refs, size_t n, int delivered);
CUresult fgs_image_chunk(fgs_session *S, fg_reader *r);
const uint8_t *fgs_image_get(fgs_session *S, fg_reader *r, uint64_t *size, CUresult *res);
void fgs_images_free_all(fgs_session *S);
/* Shared-memory transport (shm.c) and pipelined bulk copies (bulk.c). */
CUresult fgs_shm_htod(fgs_session *S, fg_reader *r);
CUresult fgs_shm_dtoh(fgs_session *S, fg_reader *r);
CUresult fgs_shm_devptr(fgs_session *S, fg_reader *r, fg_writer *out);
void fgs_shm_close(fgs_session *S);
uint8_t *fgs_shm_base(fgs_session *S); /* the region's mapping, or NULL */
/* The doorbell (doorbell.c). fgs_db_wait: spin on the request mailbox; 1 a request is posted and the sockets have
 * nothing unread (take it with fgs_db_take), 0 serve the sockets (poll them: they have something, or the worker
 * went to sleep). fgs_db_take copies the request's frame out (header into *h, payload into *buf); -1 with *why for
 * a malformed one. fgs_db_reply sends a taken request's reply (iov, total bytes): into the reply mailbox, or over
 * fd (on_socket: output frames went there first). */
int fgs_db_wait(fgs_session *S, int fd, int ctl_fd, int replied); /* replied: the last frame was answered */
int fgs_db_take(fgs_session *S, fg_header *h, uint8_t **buf, size_t *cap, uint32_t max_frame, const char **why);
int fgs_db_reply(fgs_session *S, int fd, struct iovec *iov, int n, size_t total, int on_socket);
int fgs_db_posted(fgs_session *S); /* a request waits in the mailbox (park.c: the client is busy) */
void fgs_db_off(fgs_session *S);    /* the session ends: no more posts */
CUresult fgs_bulk_htod(fgs_session *S, fg_reader *r);
CUresult fgs_bulk_dtoh(fgs_session *S, fg_reader *r);
void fgs_bulk_close(fgs_session *S);
void fgs_bulk_drain(fgs_session *S);     /* before a context may be destroyed */
void fgs_shm_forget_ctx(fgs_session *S); /* likewise */
void fgs_shm_on_ctx(fgs_session *S);     /* a context became current: register the region under it */
const char *fgs_bulk_error(fgs_session *S); /* why a bulk copy ended the session, or NULL */
/* A bulk copy's connections broke (the copy was not applied: the client may send it again after a resume). */
int fgs_bulk_io_broken(fgs_session *S);
void fgs_bulk_forget_data(fgs_session *S);   /* the client is gone: close its data connections, clear the error */
void fgs_bulk_shutdown_data(fgs_session *S); /* (another thread) make a copy on them fail at once */
/* reattach.c: lingering for a client whose connection dropped (FARGPU_WORKER_LINGER_S). fgs_linger: 0 the client
 * came back on fd (the same descriptor number), 1 the session ends (reason filled). */
int fgs_linger_ms(void);
int fgs_linger(fgs_session *S, int ctl_fd, int fd, const char *lost, char *reason, size_t reason_len);
void fgs_reattach_note_batch(fgs_session *S, uint32_t seq, int wanted_reply, int replayable);
/* The reply about to be sent (iov: n segments, total bytes): kept, its later copies' buffers by reference (1: the
 * list is taken over, freed with the next reply or the session), or not (0: the caller frees the list). */
int fgs_reattach_keep_reply(fgs_session *S, const struct iovec *iov, int n, size_t total, fgs_later *later,
                            size_t nl);
void fgs_reattach_ended(fgs_session *S);
void fgs_reattach_close(fgs_session *S);
/* Move a bulk copy's bytes without touching the device (its batch cannot run: err is why). */
/* Staged async device→host copies a REPLY names with FG_LATER_BULK: the connections to stripe them over, and
 * their bytes after the REPLY frame (0, or -1: a connection broke or stalled; the others are shut down). */
int fgs_bulk_deliver_lanes(fgs_session *S);
int fgs_bulk_deliver(fgs_session *S, int fd, const fgs_later *later, size_t nl, int C);
CUresult fgs_bulk_skip(fgs_session *S, int htod, fg_reader *r, CUresult err);
/* Send pending device output as OUTPUT frames (before a REPLY with this seq). Nonzero: the socket failed. */
int fgs_output_send(fgs_session *S, int sock, uint32_t seq); /* frames sent (0: no output), or -1 */
void fgs_output_close(fgs_session *S);
int fgs_write_all(int fd, struct iovec *iov, int cnt);
/* Read n bytes of the client's connection (fg_io_read_deadline's deadlines and results), what the serve loop read
 * ahead first: bulk.c's connection 0 reads its pieces through it. */
int fgs_client_read(fgs_session *S, void *dst, size_t n, int first_ms, int step_ms, size_t *got);
/* 1 when bytes of the client's connection wait in the read-ahead (park.c: the client sent work). */
int fgs_client_pending(fgs_session *S);
/* Append "u32 count, count x (u32 offset, u32 size)" for a function or (is_kernel) a library kernel. */
void fgs_put_param_layout(fgs_session *S, void *fn, int is_kernel, fg_writer *out);

#endif
