/* fgc_rpc.h — the stub's calling convention, used by the generated exports and the hand-written calls.
 *
 * A call is one record in the outgoing batch:
 *   w = fgc_begin(op)          lock the connection, start a record (NULL: not initialised / connection lost)
 *   fg_put(w, ...)             append the arguments
 *   fgc_expect(dst, n)         (sync) where the reply's outputs go, in order
 *   fgc_sync() / fgc_async()   finish the record: sync flushes the batch and waits for the reply,
 *                              async returns at once (its errors come back with the next sync reply)
 * The connection lock is held from fgc_begin to fgc_sync/fgc_async, so records from several threads
 * never interleave. */
#ifndef FGC_RPC_H
#define FGC_RPC_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fg_ops.h"
#include "fg_wire.h"

#define FGC_EXPORT __attribute__((visibility("default")))

/* Returns CUDA_SUCCESS once cuInit has connected, else the error a call made now must return. */
CUresult fgc_state_error(void);
#define FGC_REQUIRE_INIT()                        \
    do {                                          \
        CUresult fgc_e_ = fgc_state_error();      \
        if (fgc_e_ != CUDA_SUCCESS) return fgc_e_; \
    } while (0)

fg_writer *fgc_begin(uint16_t op);
CUresult fgc_last_error(void);
void fgc_put_handle(fg_writer *w, const void *h);
void fgc_put_cstr(fg_writer *w, const char *s);
/* Reference n bytes of caller memory as part of the current record without copying (sync calls only:
 * the batch is sent before the call returns). */
void fgc_put_external(const void *p, size_t n);
void fgc_expect(void *dst, size_t n);
CUresult fgc_sync(void);
/* Like fgc_sync, but the reply may carry fewer output bytes than expected; *got receives the count. */
CUresult fgc_sync_var(size_t *got);
/* A call whose reply has a variable length, up to cap bytes, read into a buffer of its own (var_reply.c):
 *   w = fgc_begin_var(op, cap, &reply, &r)   allocate the buffer and begin (NULL: r says why; nothing to free)
 *   fg_put(w, ...)                            append the arguments
 *   r = fgc_sync_var_reply(reply, cap, &rd)   send, wait; on success rd reads the reply's bytes and the caller
 *                                            frees reply, on failure reply is freed already */
fg_writer *fgc_begin_var(uint16_t op, size_t cap, uint8_t **reply, CUresult *err);
CUresult fgc_sync_var_reply(uint8_t *reply, size_t cap, fg_reader *rd);
CUresult fgc_async(void);
/* Like fgc_sync for a call whose answer never changes: answered from the stub's cache when it can (memo.c). */
CUresult fgc_sync_memo(void);
/* For a setter whose repetition changes nothing: a repeat is answered here, a change empties the cache. */
CUresult fgc_sync_memo_set(void);
/* Empty that cache (called, with the connection lock held, by calls that may change a cached answer). */
void fgc_memo_clear(void);
/* Stream captures under way in this process (batch.c). */
void fgc_capture_begin(void);
void fgc_capture_end(void);
int fgc_capture_active(void);
/* Hand the thread's capture mode (kept in the stub while nothing is captured) to the server (capture.c). */
CUresult fgc_capture_mode_sync(void);
/* Register a destination for device→host data an async record will deliver with a later reply. */
void fgc_expect_later(void *dst, size_t n);

uint64_t fgc_handle_id(const void *h);
CUstream fgc_ptsz_stream(CUstream s);
CUresult fgc_unsupported(const char *name, int *logged);
/* Debug log (FARGPU_LOG=debug) of a call answered in the stub with an error. */
void fgc_trace_failure(const char *name, CUresult r);

/* Device ranges the server allocated (unified.c), to classify unified-address copies. */
void fgc_device_range_add(uint64_t base, uint64_t size);
void fgc_device_range_remove(uint64_t base);
int fgc_device_range_find(uint64_t p, uint64_t *base, uint64_t *size);
int fgc_device_range_owner(uint64_t p, uint64_t *ctx, int *dev); /* its allocating context and device */
/* Stream-ordered memory at base came from pool id `pool` of device dev (0: that device's default pool); _pool: the
 * pool of the allocation holding p (0 when p is not stream-ordered memory). */
void fgc_device_range_set_pool(uint64_t base, uint64_t pool, int dev);
int fgc_device_range_pool(uint64_t p, uint64_t *pool, int *dev);
/* The application's own VMM mapping at base (vmm.c): the driver takes no SYNC_MEMOPS on it. */
void fgc_device_range_mark_vmm(uint64_t base);
/* The SYNC_MEMOPS attribute of the range holding p, set to value first when set is 1: the value, -1 when p is no
 * device range, -2 when it cannot be set there (an application's VMM mapping). _any: some range has it set. */
int fgc_device_range_sync_memops(uint64_t p, int set, int value);
int fgc_sync_memops_any(void);
/* The end of a synchronous memset or copy to dst (any = 1: to memory not known here) that returned r: while the
 * destination has SYNC_MEMOPS set, it waits for the device first (pointer.c). */
CUresult fgc_sync_memop_done(CUresult r, uint64_t dst, int any);
/* A module/library global the server named: its range is device memory for copies (unified.c). */
void fgc_note_global(uint64_t p, uint64_t size);
/* Page-locked host memory the stub handed out or registered (memory.c). */
int fgc_host_block_find(const void *p, void **base, size_t *size, unsigned *flags);
/* The SYNC_MEMOPS attribute of the block holding p, set to value first when set is 1; -1 when none holds p. */
int fgc_host_block_sync_memops(const void *p, int set, int value);

/* Thread-local current context (virtual id), kept in the stub; the server learns it lazily. */
uint64_t fgc_ctx_current(void);
void fgc_ctx_set_current(uint64_t id);
void fgc_ctx_forget(uint64_t id);
/* ctx.c: context `id` was destroyed (cuCtxDestroy, or the green context it was converted from went): it leaves
 * this thread's stack, the server's current context is no longer known, its context-local storage goes. */
void fgc_ctx_gone(uint64_t id);
/* Context-local storage of the runtime's private table (export_tables.c): run destructors of a dead context. */
void fgc_cls_context_gone(uint64_t ctx);

/* Logging to stderr, prefixed "fargpu: ". Level from FARGPU_LOG (error, warn, info, debug, trace = every
 * record sent; default warn). */
enum { FGC_LOG_ERROR = 0, FGC_LOG_WARN = 1, FGC_LOG_INFO = 2, FGC_LOG_DEBUG = 3, FGC_LOG_TRACE = 4 };
void fgc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Connection (conn.c). */
CUresult fgc_connect(void);
int fgc_io_write(const struct iovec *iov, int iovcnt, size_t total);
int fgc_io_read(void *dst, size_t n);
int fgc_io_read_first(void *dst, size_t n);
/* The reply being read is n bytes at p (the doorbell's mailbox), until fgc_io_memory_end. */
void fgc_io_from_memory(const void *p, size_t n);
void fgc_io_memory_end(void);
void fgc_io_forget(void);       /* a new connection: drop what the old one's read-ahead held */
size_t fgc_io_buffered(void);   /* bytes read ahead and not yet taken */
int fgc_conn_unasked(void);      /* the connection holds what no call asked for (a CLOSE, its end) */
void fgc_mark_broken(CUresult err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *fgc_endpoint(void);

#endif
