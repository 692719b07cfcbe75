/* session.c — a replay session: open the driver, serve the client's batches, reply, and free
 * everything when the client goes away.
 *
 * The loop reads one frame at a time (growing its buffer only as bytes arrive, so a header that promises
 * a large frame costs nothing until the bytes come), replays every record through the generated
 * dispatch, keeps the first async error as the deferred error, and answers a batch whose last record is
 * synchronous. Any malformed input ends the session with a CLOSE frame naming the reason.
 * The tables behind the ids a session hands out are in handles.c. */
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgs_public.h"
#include "fgs_session.h"

void fgs_log(fgs_session *S, const char *fmt, ...) {
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fargpu-worker[%s]: %s\n", S ? S->log_prefix : "-", line);
}

CUresult fgs_missing(fgs_session *S, const char *name) {
    static char logged[64][64];
    static int n;
    for (int i = 0; i < n; i++)
        if (!strcmp(logged[i], name)) return CUDA_ERROR_NOT_SUPPORTED;
    if (n < 64) snprintf(logged[n++], sizeof logged[0], "%s", name);
    fgs_log(S, "the driver does not provide %s; answering CUDA_ERROR_NOT_SUPPORTED", name);
    return CUDA_ERROR_NOT_SUPPORTED;
}

void *fgs_scratch(fgs_session *S, size_t n) {
    if (n > S->scratch_cap) {
        void *p = realloc(S->scratch, n);
        if (!p) return NULL;
        S->scratch = p;
        S->scratch_cap = n;
    }
    return S->scratch;
}

const char *fgs_get_cstr(fg_reader *r) {
    uint32_t n = fg_get_u32(r);
    const uint8_t *p = fg_take(r, n);
    if (!p || n == 0 || p[n - 1] != 0) {
        r->failed = 1;
        return NULL;
    }
    return (const char *)p;
}

/* ---- contexts ---- */

CUresult fgs_set_ctx(fgs_session *S, fg_reader *r) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *ctx;
    if (fgs_handle_get(S, FGH_CONTEXT, id, &ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    CUresult res = S->api->cuCtxSetCurrent((CUcontext)ctx);
    if (res == CUDA_SUCCESS) fgs_shm_on_ctx(S);
    return res;
}

CUresult fgs_cuCtxCreate_v4(fgs_session *S, fg_reader *r, fg_writer *out) {
    unsigned flags = fg_get_u32(r);
    CUdevice dev;
    fg_get(r, &dev, sizeof dev);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    /* A created context pins device memory of its own (about 0.5 GiB on an H100): it is charged to the lease,
     * so that creating contexts is no way around the quota. The session's primary context is not. */
    if (S->n_created_ctx == sizeof S->created_ctx / sizeof S->created_ctx[0]) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = fgs_charge_dev(S, (int)dev, S->ctx_charge);
    if (res != CUDA_SUCCESS) return res;
    CUcontext ctx = NULL;
    res = S->api->cuCtxCreate_v4(&ctx, NULL, flags, dev);
    if (res != CUDA_SUCCESS) {
        fgs_uncharge_dev(S, (int)dev, S->ctx_charge);
        return res;
    }
    S->created_ctx[S->n_created_ctx++] = ctx;
    fg_put_u64(out, fgs_handle_add(S, FGH_CONTEXT, ctx));
    fgs_shm_on_ctx(S); /* the new context is current */
    return res;
}

CUresult fgs_cuCtxDestroy_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *ctx;
    if (id == 0 || fgs_handle_get(S, FGH_CONTEXT, id, &ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    CUdevice cdev = 0; /* whose charge ends with it */
    CUcontext was = NULL;
    if (S->api->cuCtxPushCurrent_v2((CUcontext)ctx) == CUDA_SUCCESS) {
        S->api->cuCtxGetDevice(&cdev);
        S->api->cuCtxPopCurrent_v2(&was);
    }
    CUresult res = S->api->cuCtxDestroy_v2((CUcontext)ctx);
    if (res != CUDA_SUCCESS) return res;
    fgs_handle_remove(S, FGH_CONTEXT, id);
    for (size_t i = 0; i < S->n_created_ctx; i++)
        if (S->created_ctx[i] == ctx) {
            S->created_ctx[i] = S->created_ctx[--S->n_created_ctx];
            fgs_uncharge_dev(S, (int)cdev, S->ctx_charge);
            break;
        }
    return res;
}

/* ---- session lifecycle ---- */

FGS_EXPORT fgs_session *fgs_open(const char *driver_path, unsigned long long vram_quota, unsigned int max_frame,
                                 char *err, unsigned long errlen) {
    fgs_session *S = (fgs_session *)calloc(1, sizeof *S);
    fgs_api *api = (fgs_api *)calloc(1, sizeof *api);
    if (!S || !api) {
        snprintf(err, errlen, "out of memory");
        free(S);
        free(api);
        return NULL;
    }
    S->api = api;
    S->cb_fd = -1;
    S->client_fd = -1;
    S->vram_quota = vram_quota;
    S->max_frame = max_frame ? max_frame : FG_DEFAULT_MAX_FRAME;
    if (getrandom(&S->salt, sizeof S->salt, 0) != (ssize_t)sizeof S->salt) S->salt = (uint64_t)getpid() * 2654435761u;
    snprintf(S->log_prefix, sizeof S->log_prefix, "%d", (int)getpid());
    S->dl = dlopen(driver_path, RTLD_NOW | RTLD_LOCAL);
    if (!S->dl) {
        snprintf(err, errlen, "cannot load the driver %s: %s", driver_path, dlerror());
        free(api);
        free(S);
        return NULL;
    }
    const char *missing = fgs_api_load(api, S->dl);
    CUresult r = missing ? CUDA_SUCCESS : api->cuInit(0);
    if (!missing && r == CUDA_SUCCESS && fgs_journal_open(S)) r = CUDA_ERROR_OUT_OF_MEMORY;
    fgs_arena_init(S);
    if (missing || r != CUDA_SUCCESS) {
        if (missing) snprintf(err, errlen, "the driver %s lacks %s", driver_path, missing);
        else snprintf(err, errlen, "cuInit on %s failed with %d", driver_path, (int)r);
        dlclose(S->dl);
        free(api);
        free(S);
        return NULL;
    }
    return S;
}

FGS_EXPORT unsigned long long fgs_vram_used(fgs_session *S) { return S->vram_used; }

FGS_EXPORT void fgs_close(fgs_session *S) {
    if (!S) return;
    if (fgs_pager_wake(S) != 0) { /* its CUDA state is in a driver checkpoint that cannot come back */
        fgs_log(S, "the session's driver checkpoint was not restored; exiting without CUDA clean-up (the driver "
                   "frees what the process held)");
        _exit(3);
    }
    if (S->cb_fd > 0) shutdown(S->cb_fd, SHUT_RDWR); /* a host function waiting on the client returns now */
    fgs_later_free_all(S);
    fgs_ipc_close(S); /* memory other sessions shared with this one */
    fgs_mempool_close(S); /* its events; the memory goes with the session's allocations below */
    fgs_vmm_close(S);
    fgs_arrays_close(S);
    fgs_links_close(S);
    fgs_memory_release_all(S);
    fgs_bulk_close(S);
    fgs_reattach_close(S);
    fgs_stage_close(S); /* every staged copy was given back or settled above */
    fgs_shm_close(S);
    fgs_graph_borrowed_close(S); /* child graphs go with their parents */
    /* Streams, events and modules first, then the contexts that own them. */
    static const int order[] = {FGH_GRAPHEXEC, FGH_GRAPH, FGH_EVENT, FGH_STREAM, FGH_MODULE, FGH_LIBRARY, FGH_CONTEXT};
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        fgs_table *t = &S->tables[order[k]];
        for (uint32_t i = 0; i < t->n; i++) {
            void *h = t->real[i];
            if (!h) continue;
            switch (order[k]) {
            case FGH_EVENT: S->api->cuEventDestroy_v2((CUevent)h); break;
            case FGH_STREAM: S->api->cuStreamDestroy_v2((CUstream)h); break;
            case FGH_MODULE: S->api->cuModuleUnload((CUmodule)h); break;
            case FGH_LIBRARY:
                if (S->api->cuLibraryUnload) S->api->cuLibraryUnload((CUlibrary)h);
                break;
            case FGH_GRAPHEXEC:
                if (S->api->cuGraphExecDestroy) S->api->cuGraphExecDestroy((CUgraphExec)h);
                break;
            case FGH_GRAPH:
                if (S->api->cuGraphDestroy) S->api->cuGraphDestroy((CUgraph)h);
                break;
            default: break; /* contexts: primary ones are released at process exit, created ones below */
            }
        }
    }
    fgs_green_close(S); /* their streams went above; their converted contexts leave the table */
    fgs_table *ct = &S->tables[FGH_CONTEXT];
    for (uint32_t i = 0; i < ct->n; i++) {
        unsigned flags;
        int active;
        CUcontext cur = (CUcontext)ct->real[i];
        if (!cur) continue;
        /* A context that is some device's primary context is released, a created one destroyed. */
        CUdevice dev = 0;
        if (S->api->cuCtxSetCurrent(cur) == CUDA_SUCCESS && S->api->cuCtxGetDevice(&dev) == CUDA_SUCCESS &&
            S->api->cuDevicePrimaryCtxGetState(dev, &flags, &active) == CUDA_SUCCESS) {
            CUcontext prim = NULL;
            if (active && S->api->cuDevicePrimaryCtxRetain(&prim, dev) == CUDA_SUCCESS) {
                S->api->cuDevicePrimaryCtxRelease_v2(dev);
                if (prim == cur) continue;
            }
        }
        S->api->cuCtxDestroy_v2(cur);
    }
    for (int k = 0; k < FGH_LIMIT; k++) {
        free(S->tables[k].real);
        free(S->tables[k].free_list);
        free(S->tables[k].by_real);
    }
    free(S->allocs);
    free(S->globals);
    free(S->later);
    free(S->scratch);
    free(S->ahead);
    fgs_images_free_all(S);
    fgs_output_close(S);
    fgs_userobj_close(S); /* before the callbacks its destructors use go */
    fgs_callbacks_close(S);
    fgs_pager_close(S);
    fgs_ledger_close(S); /* everything is released: this session's charge on the lease goes to 0 */
    fgs_journal_free(S);
    /* The driver stays loaded: unloading a CUDA driver inside a process is not supported. */
    free((void *)S->api);
    free(S);
}

/* ---- serving ---- */

int fgs_write_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        ssize_t k = writev(fd, iov, cnt > 64 ? 64 : cnt);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        while (cnt > 0 && (size_t)k >= iov->iov_len) {
            k -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + k;
            iov->iov_len -= (size_t)k;
        }
    }
    return 0;
}

/* The serve loop reads a frame's header with one recv of whatever has arrived (up to AHEAD bytes): a small batch
 * costs one system call, not two. What follows the frame (the next frame, or a bulk copy's raw pieces) is taken
 * from here first. */
#define AHEAD 16384

int fgs_client_read(fgs_session *S, void *dst, size_t n, int first_ms, int step_ms, size_t *got) {
    size_t k = S->ahead_end - S->ahead_at < n ? S->ahead_end - S->ahead_at : n;
    if (k) {
        memcpy(dst, S->ahead + S->ahead_at, k);
        S->ahead_at += k;
    }
    size_t more = 0;
    int rc = k == n ? 0 : fg_io_read_deadline(S->client_fd, (uint8_t *)dst + k, n - k, k ? step_ms : first_ms,
                                              step_ms, &more);
    if (got) *got = k + more;
    return rc;
}

int fgs_client_pending(fgs_session *S) { return S->ahead_end > S->ahead_at; }

/* Read what the client has sent so far (the socket is readable) into the read-ahead, when it is empty. */
static void read_ahead(fgs_session *S, int fd) {
    if (S->ahead_end > S->ahead_at) return;
    S->ahead_at = S->ahead_end = 0;
    if (!S->ahead && !(S->ahead = (uint8_t *)malloc(AHEAD))) return;
    ssize_t k;
    do k = recv(fd, S->ahead, AHEAD, MSG_DONTWAIT);
    while (k < 0 && errno == EINTR);
    if (k > 0) S->ahead_end = (size_t)k; /* nothing, an error or the end: the reads below see it themselves */
}

static void send_close(int fd, const char *reason) {
    /* msgpack {"reason": reason} */
    uint8_t buf[600];
    size_t n = strlen(reason);
    if (n > 500) n = 500;
    size_t k = 0;
    buf[k++] = 0x81;
    buf[k++] = 0xa6;
    memcpy(buf + k, "reason", 6);
    k += 6;
    buf[k++] = 0xd9;
    buf[k++] = (uint8_t)n;
    memcpy(buf + k, reason, n);
    k += n;
    fg_header h = {FG_MAGIC, FG_T_CLOSE, 0, (uint32_t)k, 0};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    struct iovec iov[2] = {{hb, sizeof hb}, {buf, k}};
    fgs_write_all(fd, iov, 2);
}

/* The reply to a batch's sync record (protocol/SPEC.md, "Replies"), with every staged async device→host copy not
 * already on its way to the client with a host function's RUN message: their streams are waited for first
 * (without memory.c's lock: a trampoline on such a stream claims its copies under it), then what is still
 * staged is moved out and sent as (id, length, bytes); a copy of FG_LATER_BULK_MIN bytes or more as (id, length
 * with FG_LATER_BULK and C) alone, its bytes striped over C connections right after the frame (bulk.c). */
static int send_reply(fgs_session *S, int fd, uint32_t seq, CUresult result, CUresult deferred, uint32_t dop,
                      fg_writer *out, int db, int ack_only) {
    CUstream *streams = NULL;
    size_t ns = 0;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    int relaxed = 0;
    if (ack_only) { /* an acknowledgement (a PING with flag 1): nothing is waited for, no copy collected */
    } else if (fgs_later_streams(S, &streams, &ns)) {
        relaxed = fgs_relax(S, &mode);
        CUresult r = S->api->cuCtxSynchronize(); /* out of memory: wait for every stream instead */
        if (r != CUDA_SUCCESS && !deferred) {
            deferred = r;
            dop = FG_OP_cuMemcpyDtoHAsync_v2;
        }
    }
    if (ns && !relaxed) relaxed = fgs_relax(S, &mode);
    for (size_t i = 0; i < ns; i++) {
        CUresult r = S->api->cuStreamSynchronize(streams[i]);
        if (r != CUDA_SUCCESS && !deferred) {
            deferred = r;
            dop = FG_OP_cuMemcpyDtoHAsync_v2;
        }
    }
    fgs_unrelax(S, relaxed, mode);
    free(streams);
    fgs_later *later = NULL;
    size_t nl = 0;
    if (!ack_only && fgs_later_take(S, &later, &nl)) nl = 0; /* out of memory: they stay staged for the next reply */
    if (__atomic_exchange_n(&S->cb_failed, 0, __ATOMIC_RELAXED) && !deferred) {
        deferred = CUDA_ERROR_OPERATING_SYSTEM; /* a host function was skipped: its callback connection failed */
        dop = FG_OP_cuLaunchHostFunc;
    }
    int rc = -1, taken = 0, C = fgs_bulk_deliver_lanes(S);
    size_t nb = 0, bulk_total = 0; /* copies (and bytes) that follow the frame */
    for (size_t i = 0; i < nl; i++) {
        later[i].bulk = later[i].data && later[i].n >= FG_LATER_BULK_MIN;
        nb += (size_t)later[i].bulk;
        bulk_total += later[i].bulk ? later[i].n : 0;
    }
    struct iovec stack_iov[35];
    struct iovec *iov = stack_iov;
    uint64_t *heads = NULL;
    /* Device printf output flushed by this batch's synchronising calls goes first. */
    int frames = fgs_output_send(S, fd, seq);
    if (frames < 0) goto done;
    struct {
        uint32_t result, deferred, deferred_op, n_later;
        uint64_t out_len;
    } fx = {(uint32_t)result, (uint32_t)deferred, dop, (uint32_t)nl, result == CUDA_SUCCESS ? out->len : 0};
    size_t total = sizeof fx + (size_t)fx.out_len;
    for (size_t i = 0; i < nl; i++) total += 16 + (later[i].data && !later[i].bulk ? later[i].n : 0);
    if (total > UINT32_MAX) goto done;
    fg_header h = {FG_MAGIC, FG_T_REPLY, 0, (uint32_t)total, seq};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    size_t niov = 3 + 2 * nl;
    if (niov > 35) iov = (struct iovec *)malloc(niov * sizeof *iov);
    heads = (uint64_t *)malloc((nl ? nl : 1) * 16);
    if (!iov || !heads) goto done;
    int c = 0;
    iov[c++] = (struct iovec){hb, sizeof hb};
    iov[c++] = (struct iovec){&fx, sizeof fx};
    if (fx.out_len) iov[c++] = (struct iovec){out->buf, (size_t)fx.out_len};
    for (size_t i = 0; i < nl; i++) {
        heads[2 * i] = later[i].id;
        heads[2 * i + 1] = later[i].data ? later[i].n : 0; /* 0: the copy failed, nothing to write */
        iov[c++] = (struct iovec){&heads[2 * i], 16};
        if (later[i].bulk) heads[2 * i + 1] |= FG_LATER_BULK | 1ull << FG_LATER_C_SHIFT; /* C = 1 while kept */
        else if (heads[2 * i + 1]) iov[c++] = (struct iovec){later[i].data, later[i].n};
    }
    int cr = c; /* the REPLY frame; the bulk copies' bytes after it */
    for (size_t i = 0; i < nl; i++)
        if (later[i].bulk) iov[c++] = (struct iovec){later[i].data, later[i].n};
    /* Kept for a client that loses it with its connection: the later copies' buffers by reference, and the bulk ones
     * sent again after the frame over the new connection alone (C = 1: the frame's bytes followed by theirs). */
    taken = fgs_reattach_keep_reply(S, iov, c, sizeof hb + total + bulk_total, later, nl);
    for (size_t i = 0; nb && C > 1 && i < nl; i++)
        if (later[i].bulk) heads[2 * i + 1] += (uint64_t)(C - 1) << FG_LATER_C_SHIFT;
    /* A request taken from the doorbell's mailbox is answered there (doorbell.c) unless output went first. */
    rc = db ? fgs_db_reply(S, fd, iov, cr, sizeof hb + total, frames > 0) : fgs_write_all(fd, iov, cr);
    if (!rc && nb) rc = fgs_bulk_deliver(S, fd, later, nl, C);
done:
    if (iov != stack_iov) free(iov);
    free(heads);
    if (!taken) fgs_later_free_list(later, nl);
    return rc;
}

FGS_EXPORT int fgs_serve(fgs_session *S, int fd, int ctl_fd, char *reason, unsigned long reason_len) {
    uint8_t *buf = NULL;
    size_t cap = 0;
    fg_writer out;
    fg_writer_init(&out, 64 * 1024, (size_t)FG_CHUNK + (1u << 20));
    int rc = -1;
    CUresult deferred = CUDA_SUCCESS;
    uint32_t deferred_op = 0;
    snprintf(reason, reason_len, "unknown");
    fgs_pager_attach_ctl(S, ctl_fd);
    S->client_fd = fd;
    fg_io_send_deadline(fd); /* a client that stops reading ends its session after the I/O timeout */
    /* After a reply the next request usually follows within a round trip: spin briefly before blocking
     * (FARGPU_WORKER_SPIN_US µs; default 0, off: on a host with cores to spare it saves a wake-up per call). */
    int spin_us = fg_io_spin_us("FARGPU_WORKER_SPIN_US", 0);
    uint8_t hb[FG_HEADER_SIZE];
    fg_header h;
    int replied = 1; /* the last frame served had a reply (the doorbell spins longer after one) */
    uint64_t served_from = fgs_now_ns();
    for (;;) {
        /* With shared memory, small synchronous calls may come through the doorbell (doorbell.c). */
        int pending = fgs_client_pending(S); /* the next frame is here already: no wait, and a glance at ctl */
        int db = pending ? 0 : fgs_db_wait(S, fd, ctl_fd, replied);
        int io_ms = fg_io_timeout_ms();
        if (db) {
            const char *why = NULL;
            if (fgs_db_take(S, &h, &buf, &cap, S->max_frame, &why)) {
                snprintf(reason, reason_len, "protocol error: %s", why);
                send_close(fd, reason);
                break;
            }
            goto have_frame;
        }
        struct pollfd pf[2] = {{fd, POLLIN, 0}, {ctl_fd, POLLIN, 0}};
        if (!pending) fg_io_spin_readable(fd, spin_us);
        int np = poll(pf, ctl_fd >= 0 ? 2 : 1, pending ? 0 : -1);
        if (np < 0 && errno == EINTR) continue;
        if (np < 0) { snprintf(reason, reason_len, "poll failed: %s", strerror(errno)); break; }
        if (ctl_fd >= 0 && (pf[1].revents & (POLLIN | POLLHUP))) {
            /* Control lines from the node agent: close, page out, page in (paging.c). */
            char why[256] = "the session was ended by the node server";
            if (fgs_control_read(S, ctl_fd, why, sizeof why) || fgs_close_pending(S, why, sizeof why)) {
                send_close(fd, why);
                snprintf(reason, reason_len, "ended by control: %s", why);
                rc = 1;
                break;
            }
            if (!pending && !(pf[0].revents & (POLLIN | POLLHUP))) continue;
        }
        size_t hgot = 0;
        read_ahead(S, fd);
        int hr = fgs_client_read(S, hb, sizeof hb, -1, io_ms, &hgot); /* idle between frames: no limit */
        if (hr == -2) {
            snprintf(reason, reason_len, "the client sent %zu of a frame header's %d bytes, then nothing for %d s; "
                     "closing its connection", hgot, FG_HEADER_SIZE, io_ms / 1000);
            fgs_log(S, "%s", reason);
            send_close(fd, reason);
            rc = 0;
            break;
        }
        if (hr) { /* reattach.c: a live session may wait for its client to come back */
            if (!fgs_linger(S, ctl_fd, fd, "client disconnected", reason, reason_len)) { replied = 1; continue; }
            rc = 0;
            break;
        }
        S->sock_frames_read++;
        const char *why = fg_header_decode(hb, &h, S->max_frame);
        if (!why && h.type == FG_T_CLOSE) { /* the client ends the session (it exits): no waiting for it */
            snprintf(reason, reason_len, "the client closed the session");
            rc = 0;
            break;
        }
        if (!why && h.type != FG_T_BATCH) why = "unexpected frame type after the handshake";
        if (why) { snprintf(reason, reason_len, "protocol error: %s", why); send_close(fd, reason); break; }
        /* Grow the buffer as the payload arrives, never ahead of it. */
        size_t got = 0;
        int eof = 0;
        while (got < h.length) {
            size_t want = h.length - got;
            if (want > (1u << 20)) want = 1u << 20;
            if (got + want > cap) {
                size_t ncap = cap ? cap : 65536;
                while (ncap < got + want) ncap *= 2;
                if (ncap > h.length) ncap = h.length;
                uint8_t *nb = (uint8_t *)realloc(buf, ncap);
                if (!nb) { eof = 2; break; }
                buf = nb;
                cap = ncap;
            }
            size_t k = 0;
            int rr = fgs_client_read(S, buf + got, cap - got < h.length - got ? cap - got : h.length - got, io_ms,
                                     io_ms, &k);
            got += k;
            if (rr) { eof = rr == -2 ? 3 : 1; break; }
        }
        if (eof == 3) { /* a frame that promises more than it delivers must not hold the connection */
            snprintf(reason, reason_len, "the client sent %zu of a %u-byte frame, then nothing for %d s; closing its "
                     "connection", got, (unsigned)h.length, io_ms / 1000);
            fgs_log(S, "%s", reason);
            send_close(fd, reason);
            rc = 0;
            break;
        }
        if (eof == 1 && !fgs_linger(S, ctl_fd, fd, "client disconnected mid-frame", reason, reason_len)) {
            replied = 1;
            continue; /* the frame was not applied: the client sends it again */
        }
        if (eof) { snprintf(reason, reason_len, eof == 2 ? "out of memory" : "client disconnected mid-frame"); rc = eof == 2 ? -1 : 0; break; }
    have_frame:;
        uint64_t frame_at = fgs_now_ns(); /* from a whole frame to its reply: the worker's busy time */
        fg_reader batch;
        fg_reader_init(&batch, buf, h.length);
        fg_record rec = {0, 0, 0, NULL};
        const char *bad = NULL;
        int n;
        CUresult sync_result = CUDA_SUCCESS;
        int answered = 0;
        int lone = 1; /* the batch holds nothing but SET_CTX before its bulk copy (it may be applied again) */
        fg_writer_reset(&out);
        if (fgs_is_paged(S)) { /* the session's memory comes back before its next call runs */
            CUresult pr = fgs_page_in(S);
            char why[256];
            if (fgs_close_pending(S, why, sizeof why)) {
                send_close(fd, why);
                snprintf(reason, reason_len, "ended by control: %s", why);
                rc = 1;
                break;
            }
            if (pr != CUDA_SUCCESS) { /* nothing of the batch runs; its caller sees the error */
                /* A bulk copy's raw bytes still cross (the byte stream stays whole): moved, never DMA'd. */
                fg_reader scan;
                fg_reader_init(&scan, buf, h.length);
                fg_record last = {0, 0, 0, NULL};
                const char *sbad = NULL;
                while (fg_next_record(&scan, &last, &sbad) == 1) {
                    if (fg_reader_left(&scan) || (last.op != FG_OP_BULK_HTOD && last.op != FG_OP_BULK_DTOH)) continue;
                    fg_reader args;
                    fg_reader_init(&args, last.args, last.length);
                    if (fgs_bulk_skip(S, last.op == FG_OP_BULK_HTOD, &args, pr) != CUDA_SUCCESS && fgs_bulk_error(S)) {
                        snprintf(reason, reason_len, "protocol error: %s", fgs_bulk_error(S));
                        send_close(fd, reason);
                        rc = -1;
                        goto out;
                    }
                }
                if ((h.flags & FG_F_WANT_REPLY) && send_reply(S, fd, h.seq, pr, deferred, deferred_op, &out, db, 0)) {
                    snprintf(reason, reason_len, "client disconnected while receiving a reply");
                    rc = 0;
                    break;
                }
                if (h.flags & FG_F_WANT_REPLY) {
                    deferred = CUDA_SUCCESS;
                    deferred_op = 0;
                } else if (deferred == CUDA_SUCCESS) {
                    deferred = pr;
                }
                continue;
            }
        }
        while ((n = fg_next_record(&batch, &rec, &bad)) == 1) {
            int cls = fg_op_class(rec.op);
            int last = fg_reader_left(&batch) == 0;
            if (cls == 0) { bad = "unknown op (the client is newer than this server?)"; break; }
            if (cls == 1 && !(last && (h.flags & FG_F_WANT_REPLY))) { bad = "a synchronous call that is not the batch's last record"; break; }
            fg_reader args;
            fg_reader_init(&args, rec.args, rec.length);
            if (rec.op != FG_OP_SET_CTX && rec.op != FG_OP_BULK_HTOD && rec.op != FG_OP_BULK_DTOH) lone = 0;
            if ((rec.op == FG_OP_BULK_HTOD || rec.op == FG_OP_BULK_DTOH) && !last) {
                bad = "a bulk copy that is not the batch's last record";
                break;
            }
            if (rec.op == FG_OP_cuCtxDestroy_v2 || rec.op == FG_OP_cuDevicePrimaryCtxRelease_v2 ||
                rec.op == FG_OP_cuDevicePrimaryCtxReset_v2) { /* nothing of the transports may outlive a context */
                fgs_bulk_drain(S);
                fgs_stage_drain(S); /* staged copies into page-locked buffers complete while their streams exist */
                fgs_shm_forget_ctx(S);
                fgs_mempool_drain(S); /* pending stream-ordered frees wait on events of the context */
            }
            if (rec.op == FG_OP_cuStreamDestroy_v2 && rec.length >= 8) { /* its staged copies complete first */
                uint64_t sid;
                void *sp = NULL;
                memcpy(&sid, rec.args, 8);
                if (!fgs_handle_get(S, FGH_STREAM, sid, &sp)) fgs_later_settle(S, 1, (CUstream)sp, 1);
            }
            size_t out_before = out.len;
            S->served_records++;
            CUresult res;
            fgs_park_fix_record(S, rec.op, (uint8_t *)(uintptr_t)rec.args, rec.length); /* moved globals */
            fgs_capture_watch_before(S, rec.op);
            if (!fgs_events_answer(S, rec.op, rec.args, rec.length, &out, &res)) /* restored events' times */
                res = fgs_dispatch(S, rec.op, &args, &out);
            if (S->journal) fgs_journal_note(S, rec.op, rec.args, rec.length, res, &out, out_before);
            fgs_capture_watch(S, rec.op, rec.args, rec.length, res);
            fgs_texsurf_note(S, rec.op, res);
            if (res == FGS_PROTOCOL_ERROR || res == FGS_UNKNOWN_OP) {
                bad = fgs_bulk_error(S) ? fgs_bulk_error(S) : "malformed arguments";
                break;
            }
            if (cls == 1) {
                sync_result = res;
                answered = 1;
            } else if (res != CUDA_SUCCESS && deferred == CUDA_SUCCESS) {
                deferred = res;
                deferred_op = rec.op;
            }
        }
        if (!bad) {
            fgs_mempool_reap(S, rec.op, rec.args, rec.length); /* completed cuMemFreeAsync frees */
            fgs_capture_watch(S, 0, NULL, 0, CUDA_SUCCESS);
        }
        if (!bad && n < 0) bad = bad ? bad : "malformed record";
        if (!bad && (h.flags & FG_F_WANT_REPLY) && !answered) bad = "reply requested but the last record is not synchronous";
        if (bad && lone && fgs_bulk_io_broken(S) && fgs_linger_ms()) { /* not applied: the client sends it again */
            char lost[200];
            snprintf(lost, sizeof lost, "%s", bad);
            if (!fgs_linger(S, ctl_fd, fd, lost, reason, reason_len)) {
                replied = 1;
                continue;
            }
            rc = 0;
            break;
        }
        if (bad) {
            snprintf(reason, reason_len, "protocol error: %s (op %u)", bad, (unsigned)rec.op);
            send_close(fd, reason);
            break;
        }
        S->applied_seq = h.seq; /* a parked session resumes after this batch (park.c) */
        if (answered) {
            fgs_reattach_note_batch(S, h.seq, 1, lone && rec.op == FG_OP_BULK_DTOH); /* its reply is kept */
            uint32_t ping_flags = 0; /* PING's optional u32: 1, an acknowledgement (SPEC, "Bulk copies") */
            if (rec.op == FG_OP_PING && rec.length >= 4) memcpy(&ping_flags, rec.args, 4);
            int lost = send_reply(S, fd, h.seq, sync_result, deferred, deferred_op, &out, db, ping_flags & 1);
            deferred = CUDA_SUCCESS;
            deferred_op = 0;
            if (lost) {
                S->last_active_ns = fgs_now_ns();
                if (!fgs_linger(S, ctl_fd, fd, "client disconnected while receiving a reply", reason, reason_len)) {
                    replied = 1;
                    continue;
                }
                rc = 0;
                break;
            }
        }
        S->last_active_ns = fgs_now_ns();
        S->served_busy_ns += S->last_active_ns - frame_at;
        S->served_batches++;
        replied = (h.flags & FG_F_WANT_REPLY) != 0;
        {
            char why[256];
            if (fgs_close_pending(S, why, sizeof why)) { /* came while an allocation waited for room */
                send_close(fd, why);
                snprintf(reason, reason_len, "ended by control: %s", why);
                rc = 1;
                break;
            }
        }
        if (cap > (64u << 20)) { /* give back a large buffer after a bulk copy */
            free(buf);
            buf = NULL;
            cap = 0;
        }
    }
out:
    /* Where a slow session's time went: a worker busy most of the time limits it; one mostly waiting for frames is
     * limited by its client (or the link). Counted over this call of fgs_serve. */
    if (S->served_batches) {
        double total = (double)(fgs_now_ns() - served_from) / 1e9, busy = (double)S->served_busy_ns / 1e9;
        fgs_log(S, "served %llu records in %llu frames; replaying them took %.6f s of the %.6f s connected (%.0f%%)",
                (unsigned long long)S->served_records, (unsigned long long)S->served_batches, busy, total,
                total > 0 ? 100.0 * busy / total : 0.0);
    }
    S->served_batches = S->served_records = S->served_busy_ns = 0;
    fgs_reattach_ended(S); /* a resume that comes now is refused */
    fgs_db_off(S); /* a post from now on goes over the socket, and finds it closed */
    free(buf);
    fg_writer_free(&out);
    return rc;
}
