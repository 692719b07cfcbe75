/* fgc_internal.h — the stub's process-wide state: one connection, one outgoing batch, the outputs the
 * pending sync call expects, and the queue of async device→host copies awaiting delivery (by a reply, or by the
 * callback thread with a host function's RUN message). */
#ifndef FGC_INTERNAL_H
#define FGC_INTERNAL_H

#include <pthread.h>
#include <sys/uio.h>

#include "fgc_rpc.h"

#define FGC_MAX_EXT 16
#define FGC_MAX_OUTS 16
#define FGC_FLUSH_AT (4u * 1024u * 1024u) /* send a batch without waiting once it holds this much */
#define FGC_PENDING_D2H_LIMIT (64u * 1024u * 1024u)
#define FGC_SEND_AT (64u * 1024u) /* an async batch this large goes out at once, without waiting for sender.c */

typedef struct {
    size_t at; /* batch offset the external bytes logically follow */
    const void *p;
    size_t n;
} fgc_ext;

typedef struct {
    void *dst;
    size_t n;
} fgc_dest;

typedef struct {
    pthread_mutex_t mu;
    pthread_mutex_t wmu; /* held while writing to fd; taken after mu, never before (sender.c writes without mu) */
    int fd;
    int initialised;  /* cuInit finished (successfully or not) */
    CUresult init_result;
    CUresult broken;  /* nonzero once the connection is unusable */
    uint32_t max_frame;
    uint32_t seq;
    char session[64];

    fg_writer batch;
    size_t rec_start;
    size_t rec_ext;   /* external bytes in the current record */
    fgc_ext ext[FGC_MAX_EXT];
    int n_ext;
    size_t ext_total;
    uint64_t ctx_sent; /* context the server has current; UINT64_MAX: unknown */
    uint16_t last_op;  /* op of the record being built (for the debug log of failed calls) */
    uint64_t batch_since_ns; /* when the oldest unsent async record was added; 0: nothing unsent (sender.c) */

    fgc_dest outs[FGC_MAX_OUTS];
    int n_outs;
    fgc_dest *later; /* async D2H destinations, FIFO */
    size_t n_later, cap_later, later_bytes;
    /* later[i] has id later_base + i (ids count the process's async D2H records from 0, as the server does) and
     * state later_state[i]. later, later_state, n_later, cap_later and later_base are guarded by batch.c's
     * later lock (the callback thread delivers too); later_bytes (pending bytes, an upper bound between replies)
     * only by mu. */
    uint8_t *later_state;
    uint64_t later_base;
} fgc_state;

enum { FGC_LATER_PENDING = 0, FGC_LATER_RECEIVING = 1, FGC_LATER_DONE = 2 };

extern fgc_state g_fgc;

/* conn.c: the node driver's version string as the server told it at HELLO_OK ("" when it did not). */
const char *fgc_remote_driver_version(void);

/* sender.c: called with g_fgc.mu held after an async record was added; sends it soon from a background thread. */
void fgc_sender_note(void);
/* batch.c: send the batch now without waiting for a reply (g_fgc.mu held). Returns 0 or -1 (connection broken). */
int fgc_send_pending(void);
/* batch.c, for sender.c: the same, but g_fgc.mu is released while the bytes are written (other threads go on
 * building the next batch) and held again on return. */
int fgc_send_pending_unlocked(void);
/* batch.c: take async D2H copy `id` for a delivery of len bytes, by a reply (by_callback 0: it is done at once)
 * or by a RUN message (1: receiving, until fgc_later_settle). Returns 1 with *dst to write len bytes to; 0 when
 * a reply names a copy that was delivered already (read and drop the bytes); -1 when the id or the length is not
 * one the stub asked for (len is the copy's size, or 0: the copy failed and nothing is written). */
int fgc_later_claim(uint64_t id, uint64_t len, int by_callback, void **dst);
/* batch.c: a RUN message's copies arrived whole (delivered) or not (pending again, for the next reply). */
void fgc_later_settle(uint64_t id, int delivered);
/* batch.c: page-locked host memory [p, p + n) is about to be freed or unregistered. The driver synchronises there;
 * so does the stub when an async device→host copy into that memory still awaits its delivery (a PING collects
 * it), so that no reply writes into memory the application gave back. Returns the PING's result, or success. */
CUresult fgc_later_collect_into(const void *p, size_t n);
/* batch.c, for the transports (g_fgc.mu held by a fgc_begin): end the current record and send the batch now,
 * asking for a reply or not; the lock stays held. 0, or -1 with the connection marked broken. */
int fgc_send_record_locked(int want_reply);
/* batch.c: end the open record (record_open) and append a PING, or (0) send a lone PING; wait for its reply
 * (releases g_fgc.mu). The PING's reply brings the records' errors as its deferred error. */
CUresult fgc_sync_ping_locked(int record_open);
/* batch.c, for bulk.c: take g_fgc.mu, send everything batched so far, and give a frame of its own its seq (*seq)
 * and the context it runs in (*ctx, named by the frame's SET_CTX). 0 with the lock held; -1 without it
 * (fgc_last_error says why). */
int fgc_begin_alone(uint16_t op, uint64_t *ctx, uint32_t *seq);
/* batch.c: a PING that only acknowledges what went before (its reply waits for no stream and delivers no async
 * device→host copy; releases g_fgc.mu): its deferred error is the earlier records'. */
CUresult fgc_ack_ping_locked(void);
/* batch.c: read the reply to a batch fgc_send_record_locked(1) sent (releases g_fgc.mu). */
CUresult fgc_read_reply_locked(void);
/* conn.c: open an extra data connection to the session (striped bulk copies). Returns its fd, or -1. */
int fgc_open_data_channel(void);
/* callbacks.c: host functions submitted (outside stream capture) whose DONE has not been sent yet. */
int fgc_host_fns_outstanding(void);
/* callbacks.c: send the pending batch and wait until those host functions ran (no lock held). Fails when the
 * callback connection or the session ends first. */
CUresult fgc_host_fns_wait(void);
/* launch.c: "u32 size, bytes" of a kernel's packed parameter buffer, as launches send it. */
CUresult fgc_put_kernel_params(fg_writer *w, CUfunction f, void **kernelParams, void **extra);
/* arrays.c: a 2D copy with a CUDA array on one side, done as a 3D copy. */
CUresult fgc_copy2d_arrays(const CUDA_MEMCPY2D *c, CUstream s, int async);
/* callbacks.c: a cookie for a graph host node's function (run in this process at each launch); 0: none. */
uint64_t fgc_host_node_cookie(CUhostFn fn, void *userData);
/* callbacks.c: the function and data of a host node's cookie; 0 when it is none of ours. */
int fgc_host_node_lookup(uint64_t cookie, CUhostFn *fn, void **userData);
/* graph_build.c: the host memory whose device shadow starts at dev (a memcpy node's); 0: none. */
int fgc_graph_shadow_host(uint64_t dev, void **host);
/* graph_build.c: device shadows of host memory made elsewhere (capture_copies.c). A new shadow of `size` bytes of
 * host memory at `host`, at device address dev (memory the caller allocated with fgc_shadow_mem_alloc; the
 * shadow owns it from here): out, copied back into the host after each launch; pre, filled from it before. Keep:
 * bound to a graph or executable (owner id), shared from there as a memcpy node's shadows are; discard: freed,
 * never bound. Move: the bindings of graph `from` go to `to`; drop: owner's bindings go (the shadows with them
 * once nothing else holds them); count: how many bindings owner has. */
void *fgc_shadow_new(uint64_t host, uint64_t dev, size_t size, int out, int pre);
void fgc_shadow_keep(uint64_t owner, void *sh);
void fgc_shadow_discard(void *sh);
void fgc_graph_shadows_move(uint64_t from, uint64_t to);
void fgc_graph_shadows_drop(uint64_t owner);
size_t fgc_graph_shadows_count(uint64_t owner);
/* capture_copies.c: a shadow's device memory, allocated and freed with the calling thread's capture mode relaxed
 * on the node while any capture is under way (so a global-mode capture is not invalidated by it). */
CUresult fgc_shadow_mem_alloc(size_t n, CUdeviceptr *dev);
void fgc_shadow_mem_free(CUdeviceptr dev);
/* capture_copies.c: an async copy with host memory on one side, on stream s: 1 when s is capturing and the copy
 * was captured through a device shadow (its result in *r); 0: not capturing, the caller copies as usual. 3D: c's
 * host side is CU_MEMORYTYPE_HOST (host pointer set), the other side device memory; keep_region: host memory in
 * the shared-memory region is left to the caller (0 when the caller would not copy it in place). */
int fgc_capture_htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, CUresult *r);
int fgc_capture_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, CUresult *r);
int fgc_capture_copy3d(const CUDA_MEMCPY3D *c, CUstream s, int keep_region, CUresult *r);
/* capture_copies.c, for cuStreamEndCapture on s: before it, the graph id of s's capture when that capture holds
 * shadows (0: none); after it, once the capture is over: `got` the graph handed out (0: the capture failed; its
 * shadows are freed unless keep, a capture into the application's graph). */
uint64_t fgc_capture_copies_graph(CUstream s);
void fgc_capture_copies_ended(uint64_t graph, uint64_t got, int keep);
/* capture.c: status, id and graph id of stream s's capture (the per-thread arrays the application was handed
 * stay untouched); whether graph is an application's graph a capture was made into. */
CUresult fgc_capture_of(CUstream s, CUstreamCaptureStatus *st, uint64_t *id, uint64_t *graph);
int fgc_capture_into_app_graph(uint64_t graph);
/* graph_mem.c: memory allocation and free nodes, emulated in the stub. */
int fgc_graph_mem_node_type(uint64_t node, CUgraphNodeType *type); /* 1: one of them (type set) */
int fgc_graph_mem_user_free(CUdeviceptr p);                          /* 1: a graph allocation (handled) */
void fgc_graph_mem_cloned(uint64_t from, CUgraph to);                /* cuGraphClone made `to` from `from` */
void fgc_graph_mem_instantiated(uint64_t graph, uint64_t exec);      /* exec runs graph's allocations */
void fgc_graph_mem_updated(uint64_t exec, uint64_t graph);           /* cuGraphExecUpdate from graph */
void fgc_graph_mem_launched(uint64_t exec);
void fgc_graph_mem_destroyed(uint64_t owner);                        /* a graph or executable went */
int fgc_graph_mem_holds(uint64_t graph);
/* Stream capture: an allocation the worker made on a capturing stream (its node and graph), and a free under
 * capture (a free node; CUDA_ERROR_INVALID_VALUE for memory that is no graph allocation). */
void fgc_graph_mem_captured_alloc(CUstream s, uint64_t node, uint64_t graph, CUdeviceptr d, size_t bytes, int dev);
CUresult fgc_graph_mem_capture_free(CUdeviceptr d, CUstream s);
/* A capture on stream s ended (ok: its graph reached the application); a failed one's graph allocations go. */
void fgc_graph_mem_capture_ended(CUstream s, int ok);
/* graph_cond.c: a conditional node (cuGraphAddNode's conditional kind); sets c->phGraph_out. */
CUresult fgc_graph_add_conditional(CUgraphNode *ph, CUgraph g, const CUgraphNode *deps, size_t n,
                                   CUDA_CONDITIONAL_NODE_PARAMS *c);                             /* 1: graph has memory nodes */
void fgc_graph_mem_node_gone(uint64_t node);                         /* cuGraphDestroyNode */

#endif
