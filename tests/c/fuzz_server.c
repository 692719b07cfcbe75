/* fuzz_server.c — the replay engine (server/replay, server/generated, protocol/c) under ASan + UBSan, serving
 * a scripted and randomised client over a socketpair, on the simulated device (libfargpu_sim.so).
 *
 *   fuzz_server <libfargpu_sim.so> [sessions, default 300] [seed]
 *
 * 1. Leak check: a session retains the primary context, allocates 3 × 5 MiB (cuMemAlloc_v2 after SET_CTX)
 *    and disconnects; fgs_close must give the memory back: a fresh session's cuMemGetInfo_v2 sees the
 *    baseline free memory again (and so does the sim itself, asked directly through dlsym).
 * 2. Fuzz: `sessions` sessions, each fgs_open → fgs_serve (in a thread) → fgs_close, fed a sequence of frames:
 *    batches of records built from the op table (protocol/c/generated/fg_ops.h) with argument layouts read
 *    off server/generated/dispatch.c and the custom ops, filled with live handles harvested from replies,
 *    random handles, device pointers in, at the edge of and far outside real allocations, random lengths,
 *    a PTX module with the sim's test kernels; then structurally bad frames (bad magic, non-BATCH type,
 *    oversized, truncated, unknown op, misplaced sync records, garbage). Asserts: the server never crashes
 *    (ASan/UBSan abort), never hangs (alarm), answers every WANT_REPLY batch with a REPLY of the same seq whose
 *    length adds up, or ends with CLOSE; a frame that is certainly a protocol error gets a CLOSE frame and
 *    fgs_serve returns -1; a disconnect returns 0; a control-fd close sends CLOSE and returns 1.
 * 3. Leak check again after all fuzz sessions: the sim's free memory is back at the baseline.
 * LeakSanitizer (part of ASan) checks host-memory leaks of the engine at exit. */
#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fg_ops.h"
#include "fg_wire.h"
#include "fgs_public.h"

#define TIMEOUT_S 20 /* per session: longer means the server hangs */

static int failures;
static unsigned cur_session;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL (session %u): ", cur_session);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    failures++;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "FAIL: the server did not finish within the timeout (hang)\n";
    ssize_t k = write(2, msg, sizeof msg - 1);
    (void)k;
    _exit(3);
}

/* ---------------------------------------------------------------- randomness ---- */

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static uint64_t rndn(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(int percent) { return (int)rndn(100) < percent; }

/* ---------------------------------------------------------------- a session under test ---- */

typedef struct {
    fgs_session *S;
    int fd, ctl;
    int rc;
    char reason[512];
    unsigned long long vram_before_close;
} server_run;

static void *serve_thread(void *arg) {
    server_run *sr = (server_run *)arg;
    sr->rc = fgs_serve(sr->S, sr->fd, sr->ctl, sr->reason, sizeof sr->reason);
    sr->vram_before_close = fgs_vram_used(sr->S);
    fgs_close(sr->S); /* on the serving thread, as server/worker.py does */
    close(sr->fd);
    return NULL;
}

typedef struct {
    server_run sr;
    pthread_t th;
    int fd;     /* the client's end */
    int ctl_w;  /* write end of the control pipe, -1 when none */
    uint32_t seq;
    int closed; /* got CLOSE or EOF */
    char close_reason[512];
} session;

static const char *g_sim;
/* FG_FUZZ_SAFE_IMAGES=1 leaves out the hostile module images (to look for other bugs while the image-bounds
 * bug in server/replay/module.c is open). */
static int safe_images;

static int session_start(session *s, int with_ctl) {
    memset(s, 0, sizeof *s);
    char err[512];
    s->sr.S = fgs_open(g_sim, 0, 0, err, sizeof err);
    if (!s->sr.S) {
        fail("fgs_open: %s", err);
        return -1;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
        perror("socketpair");
        exit(2);
    }
    s->fd = sv[1];
    s->sr.fd = sv[0];
    s->sr.ctl = -1;
    s->ctl_w = -1;
    if (with_ctl) {
        int p[2];
        if (pipe(p)) exit(2);
        s->sr.ctl = p[0];
        s->ctl_w = p[1];
    }
    alarm(TIMEOUT_S);
    if (pthread_create(&s->th, NULL, serve_thread, &s->sr)) exit(2);
    return 0;
}

/* Disconnect and wait for the server; returns fgs_serve's rc. */
static int session_end(session *s) {
    close(s->fd);
    pthread_join(s->th, NULL);
    alarm(0);
    if (s->sr.ctl >= 0) close(s->sr.ctl);
    if (s->ctl_w >= 0) close(s->ctl_w);
    return s->sr.rc;
}

static int read_full_to(int fd, void *dst, size_t n) {
    uint8_t *p = dst;
    while (n) {
        struct pollfd pf = {fd, POLLIN, 0};
        int k = poll(&pf, 1, TIMEOUT_S * 1000);
        if (k == 0) {
            fail("no answer from the server within %d s", TIMEOUT_S);
            return -1;
        }
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void send_all(session *s, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = send(s->fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return; /* the server has gone (it closed after an error): the next read tells */
        p += k;
        n -= (size_t)k;
    }
}

/* Read one frame from the server. Returns its type (payload malloc'ed in *payload), 0 on EOF. */
static int read_frame(session *s, fg_header *h, uint8_t **payload) {
    uint8_t hb[FG_HEADER_SIZE];
    *payload = NULL;
    if (read_full_to(s->fd, hb, sizeof hb)) return 0;
    const char *why = fg_header_decode(hb, h, 0xffffffffu);
    if (why) {
        fail("server sent a bad frame header: %s", why);
        return 0;
    }
    if (h->type != FG_T_REPLY && h->type != FG_T_CLOSE) fail("server sent frame type %u", h->type);
    if (h->length > (64u << 20)) {
        fail("server frame of %u bytes", h->length);
        return 0;
    }
    *payload = malloc(h->length ? h->length : 1);
    if (read_full_to(s->fd, *payload, h->length)) {
        fail("server frame truncated");
        free(*payload);
        *payload = NULL;
        return 0;
    }
    return h->type;
}

static void note_close(session *s, const uint8_t *p, uint32_t n) {
    s->closed = 1;
    /* {"reason": str} as send_close writes it */
    if (n >= 9 && p[0] == 0x81 && p[1] == 0xa6 && memcmp(p + 2, "reason", 6) == 0 && p[8] == 0xd9 && n >= 10u + p[9]) {
        snprintf(s->close_reason, sizeof s->close_reason, "%.*s", (int)p[9], (const char *)p + 10);
    } else {
        fail("CLOSE payload is not {reason: str}");
        snprintf(s->close_reason, sizeof s->close_reason, "?");
    }
}

/* ---------------------------------------------------------------- record building ---- */

typedef struct {
    uint8_t *b;
    size_t n, cap;
} buf;

static void put(buf *o, const void *p, size_t n) {
    if (!n) return;
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 64;
        o->b = realloc(o->b, o->cap);
    }
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void put32(buf *o, uint32_t v) { put(o, &v, 4); }
static void put64(buf *o, uint64_t v) { put(o, &v, 8); }

/* Argument layouts: i 4-byte int, h u16, b u8, q size_t, p device pointer, a allocation size,
 * C S E M F handle ids (context, stream, event, module, function), s string (u32 len incl. NUL + bytes),
 * B u64 n + n bytes (host data), I u64 n + module image, K launch dims (7 × u32), P u32 n + params. */
static const char *layout[FG_OP_LIMIT] = {
    [FG_OP_SET_CTX] = "C",
    [FG_OP_PING] = "",
    [FG_OP_cuCtxCreate_v4] = "ii",
    [FG_OP_cuCtxDestroy_v2] = "C",
    [FG_OP_cuCtxGetApiVersion] = "C",
    [FG_OP_cuCtxGetDevice] = "",
    [FG_OP_cuCtxGetFlags] = "",
    [FG_OP_cuCtxGetLimit] = "i",
    [FG_OP_cuCtxGetStreamPriorityRange] = "",
    [FG_OP_cuCtxSetLimit] = "iq",
    [FG_OP_cuCtxSynchronize] = "",
    [FG_OP_cuDeviceComputeCapability] = "i",
    [FG_OP_cuDeviceGet] = "i",
    [FG_OP_cuDeviceGetAttribute] = "ii",
    [FG_OP_cuDeviceGetCount] = "",
    [FG_OP_cuDeviceGetName] = "ii",
    [FG_OP_cuDeviceGetPCIBusId] = "ii",
    [FG_OP_cuDeviceGetUuid_v2] = "i",
    [FG_OP_cuDevicePrimaryCtxGetState] = "i",
    [FG_OP_cuDevicePrimaryCtxRelease_v2] = "i",
    [FG_OP_cuDevicePrimaryCtxReset_v2] = "i",
    [FG_OP_cuDevicePrimaryCtxRetain] = "i",
    [FG_OP_cuDevicePrimaryCtxSetFlags_v2] = "ii",
    [FG_OP_cuDeviceTotalMem_v2] = "i",
    [FG_OP_cuEventCreate] = "i",
    [FG_OP_cuEventDestroy_v2] = "E",
    [FG_OP_cuEventElapsedTime_v2] = "EE",
    [FG_OP_cuEventQuery] = "E",
    [FG_OP_cuEventRecord] = "ES",
    [FG_OP_cuEventRecordWithFlags] = "ESi",
    [FG_OP_cuEventSynchronize] = "E",
    [FG_OP_cuFuncGetAttribute] = "iF",
    [FG_OP_cuFuncSetAttribute] = "Fii",
    [FG_OP_cuFuncSetCacheConfig] = "Fi",
    [FG_OP_cuLaunchKernel] = "FKSP",
    [FG_OP_cuMemAlloc_v2] = "a",
    [FG_OP_cuMemFree_v2] = "p",
    [FG_OP_cuMemGetAddressRange_v2] = "p",
    [FG_OP_cuMemGetInfo_v2] = "",
    [FG_OP_cuMemcpy] = "ppq",
    [FG_OP_cuMemcpyAsync] = "ppqS",
    [FG_OP_cuMemcpyDtoDAsync_v2] = "ppqS",
    [FG_OP_cuMemcpyDtoD_v2] = "ppq",
    [FG_OP_cuMemcpyDtoHAsync_v2] = "pSq",
    [FG_OP_cuMemcpyDtoH_v2] = "pq",
    [FG_OP_cuMemcpyHtoDAsync_v2] = "pSB",
    [FG_OP_cuMemcpyHtoD_v2] = "pB",
    [FG_OP_cuMemsetD16Async] = "phqS",
    [FG_OP_cuMemsetD16_v2] = "phq",
    [FG_OP_cuMemsetD32Async] = "piqS",
    [FG_OP_cuMemsetD32_v2] = "piq",
    [FG_OP_cuMemsetD8Async] = "pbqS",
    [FG_OP_cuMemsetD8_v2] = "pbq",
    [FG_OP_cuModuleGetFunction] = "Ms",
    [FG_OP_cuModuleGetGlobal_v2] = "Ms",
    [FG_OP_cuModuleLoadData] = "I",
    [FG_OP_cuModuleLoadDataEx] = "I",
    [FG_OP_cuModuleUnload] = "M",
    [FG_OP_cuOccupancyMaxActiveBlocksPerMultiprocessor] = "Fiq",
    [FG_OP_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags] = "Fiqi",
    [FG_OP_cuStreamCreate] = "i",
    [FG_OP_cuStreamCreateWithPriority] = "ii",
    [FG_OP_cuStreamDestroy_v2] = "S",
    [FG_OP_cuStreamGetCtx] = "S",
    [FG_OP_cuStreamGetFlags] = "S",
    [FG_OP_cuStreamGetPriority] = "S",
    [FG_OP_cuStreamQuery] = "S",
    [FG_OP_cuStreamSynchronize] = "S",
    [FG_OP_cuStreamWaitEvent] = "SEi",
};

/* A PTX module with the sim's test kernels (tests/c/kernels/test_kernels.cu) and a global. */
static const char ptx[] =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .global .align 4 .u32 fg_magic = 305419896;\n"
    ".visible .entry fg_vadd(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)\n{\n ret;\n}\n"
    ".visible .entry fg_fill_u32(.param .u64 p, .param .u32 v, .param .u64 n)\n{\n ret;\n}\n";

/* Live things harvested from replies. */
#define POOL 32
typedef struct {
    uint64_t ids[6][POOL]; /* by handle kind 1..5 */
    int nids[6];
    uint64_t ptr[POOL], size[POOL];
    int nptr;
    uint64_t fn_param_bytes[POOL]; /* parallel to ids[5] */
} pools;

static void pool_add(pools *P, int kind, uint64_t id) {
    if (!id) return;
    P->ids[kind][P->nids[kind] < POOL ? P->nids[kind]++ : (int)rndn(POOL)] = id;
}

static uint64_t pick_handle(pools *P, int kind) {
    int r = (int)rndn(100);
    if (r < 70 && P->nids[kind]) return P->ids[kind][rndn(P->nids[kind])];
    if (r < 78) return 0;
    if (r < 84) { /* a live id of another kind */
        int k = 1 + (int)rndn(5);
        if (P->nids[k]) return P->ids[k][rndn(P->nids[k])];
    }
    if (r < 90 && P->nids[kind]) return P->ids[kind][rndn(P->nids[kind])] + 1 + rndn(3); /* a neighbour */
    if (r < 93 && kind == 2) return rndn(2) ? 1 : 2; /* CU_STREAM_LEGACY / PER_THREAD */
    if (r < 96) return ((uint64_t)kind << 56) | (rnd() & 0xffffffffffull); /* right kind, wrong salt */
    return rnd();
}

static uint64_t pick_ptr(pools *P) {
    int r = (int)rndn(100);
    if (r < 70 && P->nptr) {
        int i = (int)rndn(P->nptr);
        switch (rndn(5)) {
        case 0: return P->ptr[i];
        case 1: return P->ptr[i] + rndn(P->size[i] + 1);
        case 2: return P->ptr[i] + P->size[i] - rndn(64);
        case 3: return P->ptr[i] - 1 - rndn(4096);
        default: return P->ptr[i] + (rndn(256) & ~3ull);
        }
    }
    if (r < 75) return 0;
    if (r < 80) return UINT64_MAX - rndn(4096);
    if (r < 88) return (uint64_t)(uintptr_t)&rng_state; /* a real host address that is not device memory */
    return rnd();
}

static uint64_t pick_size(void) {
    switch (rndn(8)) {
    case 0: return 0;
    case 1: return 1 + rndn(16);
    case 2: return rndn(4096);
    case 3: return rndn(1u << 20);
    case 4: return (2u << 20) + rndn(3) - 1;
    case 5: return UINT64_MAX - rndn(16);
    case 6: return rnd();
    default: return rndn(256) * 4;
    }
}

static uint32_t pick_int(void) {
    switch (rndn(6)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return (uint32_t)rndn(8);
    case 3: return (uint32_t)-1;
    case 4: return (uint32_t)rndn(200);
    default: return (uint32_t)rnd();
    }
}

/* Append op's arguments. A malformed string may or may not end the session: the generated decoders check a
 * handle before reading the fields after it, so an unknown handle answers CUDA_ERROR_INVALID_HANDLE first. */
static int build_args(pools *P, unsigned op, buf *a) {
    const char *l = layout[op];
    for (; l && *l; l++) {
        switch (*l) {
        case 'i': put32(a, pick_int()); break;
        case 'h': { uint16_t v = (uint16_t)rnd(); put(a, &v, 2); break; }
        case 'b': { uint8_t v = (uint8_t)rnd(); put(a, &v, 1); break; }
        case 'q': put64(a, pick_size()); break;
        case 'p': put64(a, pick_ptr(P)); break;
        case 'a': put64(a, chance(85) ? 1 + rndn(8u << 20) : pick_size()); break;
        case 'C': put64(a, pick_handle(P, 1)); break;
        case 'S': put64(a, pick_handle(P, 2)); break;
        case 'E': put64(a, pick_handle(P, 3)); break;
        case 'M': put64(a, pick_handle(P, 4)); break;
        case 'F': put64(a, pick_handle(P, 5)); break;
        case 's': {
            static const char *names[] = {"fg_vadd", "fg_fill_u32", "fg_magic", "fg_scale", "nope", ""};
            const char *nm = names[rndn(6)];
            uint32_t n = (uint32_t)strlen(nm) + 1;
            if (chance(5)) { /* no NUL: fgs_get_cstr must refuse */
                put32(a, n - 1 ? n - 1 : 0);
                put(a, nm, n - 1);
                return 0;
            }
            put32(a, n);
            put(a, nm, n);
            break;
        }
        case 'B': {
            uint64_t n = chance(80) ? rndn(4096) : rndn(70000);
            put64(a, n);
            uint8_t *tmp = malloc(n ? n : 1);
            for (uint64_t i = 0; i < n; i++) tmp[i] = (uint8_t)rnd();
            put(a, tmp, n);
            free(tmp);
            break;
        }
        case 'I': {
            int r = (int)rndn(safe_images ? 8 : 12);
            if (r < 5) {
                put64(a, sizeof ptx);
                put(a, ptx, sizeof ptx);
            } else if (r < 8) { /* PTX-ish text, mutated, NUL-terminated */
                char m[sizeof ptx];
                memcpy(m, ptx, sizeof ptx);
                for (int k = 0; k < 4; k++) m[rndn(sizeof ptx - 1)] = (char)(32 + rndn(95));
                put64(a, sizeof m);
                put(a, m, sizeof m);
            } else { /* hostile images: cuModuleLoadData has no length, the driver trusts the image's own */
                uint8_t img[256];
                uint64_t n = 1 + rndn(sizeof img);
                for (uint64_t i = 0; i < n; i++) img[i] = (uint8_t)rnd();
                switch (r) {
                case 8: img[0] = 0x7f; break; /* not ELF, not NUL-terminated: read as PTX past the end */
                case 9: /* an ELF magic on fewer bytes than an ELF header */
                    n = 4 + rndn(60);
                    memcpy(img, "\x7f" "ELF", 4);
                    break;
                case 10: { /* a valid-looking CUDA ELF header whose section table lies past the image */
                    n = 64 + rndn(64);
                    memset(img, 0, 64);
                    memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
                    uint16_t em = 190, shent = 64, shnum = (uint16_t)(2 + rndn(8)), strndx = 1;
                    uint64_t shoff = 64 + rndn(4096);
                    memcpy(img + 18, &em, 2);
                    memcpy(img + 40, &shoff, 8);
                    memcpy(img + 58, &shent, 2);
                    memcpy(img + 60, &shnum, 2);
                    memcpy(img + 62, &strndx, 2);
                    break;
                }
                default: break; /* random bytes */
                }
                put64(a, n);
                put(a, img, n);
            }
            break;
        }
        case 'K': {
            for (int k = 0; k < 7; k++) {
                uint32_t v = chance(85) ? (k == 6 ? 0 : 1 + (uint32_t)rndn(k == 3 ? 256 : 4)) : pick_int();
                put32(a, v);
            }
            break;
        }
        case 'P': {
            uint32_t n = chance(70) ? 32 : (uint32_t)rndn(64); /* fg_vadd / fg_fill_u32 take 28 / 24 bytes */
            put32(a, n);
            for (uint32_t k = 0; k + 8 <= n; k += 8) put64(a, chance(60) ? pick_ptr(P) : rndn(1u << 16));
            for (uint32_t k = n & ~7u; k < n; k++) { uint8_t z = (uint8_t)rnd(); put(a, &z, 1); }
            break;
        }
        }
    }
    return 0;
}

static unsigned sync_ops[FG_OP_LIMIT], async_ops[FG_OP_LIMIT];
static unsigned n_sync, n_async;

static void add_record(buf *o, unsigned op, const buf *args) {
    uint16_t op16 = (uint16_t)op, fl = 0;
    put(o, &op16, 2);
    put(o, &fl, 2);
    put32(o, (uint32_t)args->n);
    put(o, args->b, args->n);
    static const uint8_t zero[8];
    put(o, zero, fg_pad8(args->n) - args->n);
}

static void send_frame(session *s, uint16_t type, uint16_t flags, const buf *payload, uint32_t seq) {
    fg_header h = {FG_MAGIC, type, flags, (uint32_t)payload->n, seq};
    uint8_t hb[FG_HEADER_SIZE];
    fg_header_encode(&h, hb);
    buf f = {0};
    put(&f, hb, sizeof hb);
    put(&f, payload->b, payload->n);
    send_all(s, f.b, f.n);
    free(f.b);
}

/* ---------------------------------------------------------------- statistics ---- */
static unsigned long st_replies, st_ok_results, st_closes, st_allocs, st_modules, st_functions, st_launch_ok,
    st_frames, st_records, st_ctl, st_deferred;

/* After a WANT_REPLY batch: expect a REPLY with this seq (or a CLOSE). Harvests handles from the outputs. */
static void await_reply(session *s, pools *P, unsigned last_op, uint64_t alloc_size, int must_close) {
    fg_header h;
    uint8_t *p;
    int t = read_frame(s, &h, &p);
    if (t == 0) {
        if (!s->closed) fail("connection ended without CLOSE after op %u", last_op);
        s->closed = 1;
        return;
    }
    if (t == FG_T_CLOSE) {
        note_close(s, p, h.length);
        st_closes++;
        free(p);
        return;
    }
    if (must_close) fail("op %u: a protocol error was answered with a REPLY", last_op);
    st_replies++;
    if (h.seq != s->seq) fail("REPLY seq %u, want %u", h.seq, s->seq);
    if (h.length < 24) {
        fail("REPLY of %u bytes", h.length);
        free(p);
        return;
    }
    uint32_t result, deferred, dop, n_later;
    uint64_t out_len;
    memcpy(&result, p, 4);
    memcpy(&deferred, p + 4, 4);
    memcpy(&dop, p + 8, 4);
    memcpy(&n_later, p + 12, 4);
    memcpy(&out_len, p + 16, 8);
    if (deferred) st_deferred++;
    if (result != 0 && out_len != 0) fail("op %u failed (%u) but returned %" PRIu64 " output bytes", last_op, result, out_len);
    uint64_t pos = 24 + out_len;
    for (uint32_t i = 0; i < n_later && pos <= h.length; i++) {
        uint64_t n;
        if (pos + 8 > h.length) { pos = UINT64_MAX; break; }
        memcpy(&n, p + pos, 8);
        pos += 8 + n;
    }
    if (pos != h.length) fail("REPLY lengths do not add up: %" PRIu64 " vs %u (n_later %u)", pos, h.length, n_later);
    if (result == 0) {
        st_ok_results++;
        uint64_t v = 0;
        if (out_len >= 8) memcpy(&v, p + 24, 8);
        switch (last_op) {
        case FG_OP_cuDevicePrimaryCtxRetain:
        case FG_OP_cuCtxCreate_v4:
        case FG_OP_cuStreamGetCtx: pool_add(P, 1, v); break;
        case FG_OP_cuStreamCreate:
        case FG_OP_cuStreamCreateWithPriority: pool_add(P, 2, v); break;
        case FG_OP_cuEventCreate: pool_add(P, 3, v); break;
        case FG_OP_cuModuleLoadData:
        case FG_OP_cuModuleLoadDataEx: pool_add(P, 4, v); st_modules++; break;
        case FG_OP_cuModuleGetFunction: pool_add(P, 5, v); st_functions++; break;
        case FG_OP_cuMemAlloc_v2:
        case FG_OP_cuModuleGetGlobal_v2:
            if (out_len >= 8) {
                uint64_t sz = alloc_size;
                if (last_op == FG_OP_cuModuleGetGlobal_v2 && out_len >= 16) memcpy(&sz, p + 32, 8);
                int i = P->nptr < POOL ? P->nptr++ : (int)rndn(POOL);
                P->ptr[i] = v;
                P->size[i] = sz;
                if (last_op == FG_OP_cuMemAlloc_v2) st_allocs++;
            }
            break;
        default: break;
        }
    }
    free(p);
}

/* After a batch that needs no reply: a later read tells whether the server closed; nothing to do now. */

/* Read until EOF expecting a CLOSE (for frames that are certainly protocol errors). */
static void expect_close(session *s, const char *what) {
    if (s->closed) return;
    fg_header h;
    uint8_t *p;
    int t = read_frame(s, &h, &p);
    if (t == FG_T_CLOSE) {
        note_close(s, p, h.length);
        st_closes++;
    } else if (t == FG_T_REPLY) {
        fail("%s: got a REPLY, want CLOSE", what);
    } else {
        fail("%s: connection ended without CLOSE", what);
    }
    s->closed = 1;
    free(p);
}

/* ---------------------------------------------------------------- scripted client steps ---- */

static int sync_after(session *s, const buf *prefix, unsigned op, const buf *args, uint64_t ctx, uint8_t *out,
                      size_t out_n) {
    buf b = {0};
    if (ctx) {
        buf c = {0};
        put64(&c, ctx);
        add_record(&b, FG_OP_SET_CTX, &c);
        free(c.b);
    }
    if (prefix) put(&b, prefix->b, prefix->n);
    add_record(&b, op, args);
    s->seq++;
    send_frame(s, FG_T_BATCH, FG_F_WANT_REPLY, &b, s->seq);
    free(b.b);
    fg_header h;
    uint8_t *p;
    int t = read_frame(s, &h, &p);
    if (t != FG_T_REPLY || h.length < 24) {
        fail("scripted op %u: no REPLY (%s)", op, t == FG_T_CLOSE ? "CLOSE" : "EOF");
        free(p);
        return -1;
    }
    uint32_t result;
    memcpy(&result, p, 4);
    uint64_t out_len;
    memcpy(&out_len, p + 16, 8);
    if (out && out_len >= out_n) memcpy(out, p + 24, out_n);
    uint32_t deferred;
    memcpy(&deferred, p + 4, 4);
    if (deferred) fail("scripted op %u: deferred error %u", op, deferred);
    free(p);
    return (int)result;
}

static int one_sync(session *s, unsigned op, const buf *args, uint64_t ctx, uint8_t *out, size_t out_n) {
    return sync_after(s, NULL, op, args, ctx, out, out_n);
}

static uint64_t retain_primary(session *s) {
    buf a = {0};
    put32(&a, 0);
    uint64_t ctx = 0;
    int r = one_sync(s, FG_OP_cuDevicePrimaryCtxRetain, &a, 0, (uint8_t *)&ctx, 8);
    free(a.b);
    if (r != 0 || !ctx) fail("cuDevicePrimaryCtxRetain: %d", r);
    return ctx;
}

static uint64_t mem_free_now(session *s, uint64_t ctx) {
    buf a = {0};
    uint64_t v[2] = {0, 0};
    int r = one_sync(s, FG_OP_cuMemGetInfo_v2, &a, ctx, (uint8_t *)v, 16);
    if (r != 0) fail("cuMemGetInfo_v2: %d", r);
    return v[0];
}

/* A session that only asks how much memory is free. */
static uint64_t probe_free(void) {
    session s;
    if (session_start(&s, 0)) return 0;
    uint64_t ctx = retain_primary(&s);
    uint64_t f = mem_free_now(&s, ctx);
    int rc = session_end(&s);
    if (rc != 0) fail("probe session: fgs_serve returned %d (%s)", rc, s.sr.reason);
    return f;
}

/* The sim's own view, through its exported driver API on this thread. */
static uint64_t sim_free_direct(void) {
    void *dl = dlopen(g_sim, RTLD_NOW | RTLD_LOCAL);
    if (!dl) return 0;
    CUresult (*retain)(CUcontext *, CUdevice) = (CUresult(*)(CUcontext *, CUdevice))dlsym(dl, "cuDevicePrimaryCtxRetain");
    CUresult (*release)(CUdevice) = (CUresult(*)(CUdevice))dlsym(dl, "cuDevicePrimaryCtxRelease_v2");
    CUresult (*setcur)(CUcontext) = (CUresult(*)(CUcontext))dlsym(dl, "cuCtxSetCurrent");
    CUresult (*info)(size_t *, size_t *) = (CUresult(*)(size_t *, size_t *))dlsym(dl, "cuMemGetInfo_v2");
    uint64_t f = 0;
    CUcontext c = NULL;
    if (retain && release && setcur && info && retain(&c, 0) == CUDA_SUCCESS) {
        size_t fr = 0, tot = 0;
        if (setcur(c) == CUDA_SUCCESS && info(&fr, &tot) == CUDA_SUCCESS) f = fr;
        setcur(NULL);
        release(0);
    }
    dlclose(dl);
    return f;
}

/* The deep path works end to end: module load, function lookup, launch, copies (so the fuzzer's layouts are
 * right and its random calls reach the sim). */
static void kernel_check(void) {
    session s;
    if (session_start(&s, 0)) return;
    uint64_t ctx = retain_primary(&s), ptr = 0, mod = 0, fn = 0;
    buf a = {0};
    put64(&a, 1u << 20);
    if (one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)&ptr, 8)) fail("kernel check: cuMemAlloc_v2");
    a.n = 0;
    put64(&a, sizeof ptx);
    put(&a, ptx, sizeof ptx);
    int r = one_sync(&s, FG_OP_cuModuleLoadData, &a, ctx, (uint8_t *)&mod, 8);
    if (r) fail("kernel check: cuModuleLoadData: %d", r);
    a.n = 0;
    put64(&a, mod);
    put32(&a, sizeof "fg_fill_u32");
    put(&a, "fg_fill_u32", sizeof "fg_fill_u32");
    uint8_t fout[8 + 4 + 3 * 8];
    r = one_sync(&s, FG_OP_cuModuleGetFunction, &a, ctx, fout, sizeof fout);
    memcpy(&fn, fout, 8);
    uint32_t np;
    memcpy(&np, fout + 8, 4);
    if (r || np != 3) fail("kernel check: cuModuleGetFunction: %d, %u params", r, np);
    /* launch fg_fill_u32(p, 0xdeadbeef, 1000) then read 4 KiB back, in one batch */
    buf pre = {0};
    a.n = 0;
    put64(&a, fn);
    uint32_t dims[7] = {4, 1, 1, 256, 1, 1, 0};
    put(&a, dims, sizeof dims);
    put64(&a, 0);
    put32(&a, 24);
    put64(&a, ptr);
    put64(&a, 0xdeadbeef);
    put64(&a, 1000);
    add_record(&pre, FG_OP_cuLaunchKernel, &a);
    a.n = 0;
    put64(&a, ptr);
    put64(&a, 4096);
    uint32_t back[1024];
    r = sync_after(&s, &pre, FG_OP_cuMemcpyDtoH_v2, &a, ctx, (uint8_t *)back, sizeof back);
    if (r || back[0] != 0xdeadbeef || back[999] != 0xdeadbeef || back[1000] != 0)
        fail("kernel check: fill + DtoH: %d, %x %x %x", r, back[0], back[999], back[1000]);
    free(pre.b);
    free(a.b);
    if (session_end(&s) != 0) fail("kernel check: fgs_serve: %s", s.sr.reason);
}

static void leak_check(uint64_t *baseline) {
    cur_session = 0;
    uint64_t free0 = probe_free();
    *baseline = free0;
    session s;
    if (session_start(&s, 0)) return;
    uint64_t ctx = retain_primary(&s);
    for (int k = 0; k < 3; k++) {
        buf a = {0};
        put64(&a, 5u << 20);
        uint64_t ptr = 0;
        int r = one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)&ptr, 8);
        free(a.b);
        if (r != 0 || !ptr) fail("cuMemAlloc_v2(5 MiB): %d", r);
    }
    uint64_t free1 = mem_free_now(&s, ctx);
    int rc = session_end(&s);
    if (rc != 0) fail("alloc session: fgs_serve returned %d (%s)", rc, s.sr.reason);
    if (free0 < free1 || free0 - free1 < (15u << 20))
        fail("3 × 5 MiB allocated but free memory went from %" PRIu64 " to %" PRIu64, free0, free1);
    if (s.sr.vram_before_close < (15u << 20)) fail("fgs_vram_used %llu after 15 MiB", s.sr.vram_before_close);
    uint64_t free2 = probe_free();
    if (free2 != free0) fail("leak: free memory %" PRIu64 " after the session closed, %" PRIu64 " before", free2, free0);
    uint64_t direct = sim_free_direct();
    if (direct != free0) fail("leak: the sim reports %" PRIu64 " free, the baseline was %" PRIu64, direct, free0);
    printf("leak check: baseline free %" PRIu64 ", during %" PRIu64 " (-%" PRIu64 "), after close %" PRIu64 "\n", free0,
           free1, free0 - free1, free2);
}

/* ---------------------------------------------------------------- the fuzz session ---- */

static void fuzz_session(unsigned idx) {
    cur_session = idx;
    int use_ctl = chance(10);
    session s;
    if (session_start(&s, use_ctl)) return;
    pools P;
    memset(&P, 0, sizeof P);
    uint64_t ctx = 0;
    if (chance(90)) {
        ctx = retain_primary(&s);
        pool_add(&P, 1, ctx);
    }
    if (ctx && chance(50)) { /* live state to aim at: an allocation, a module and its functions and global */
        buf a = {0};
        uint64_t v[2] = {0, 0};
        put64(&a, 1 + rndn(4u << 20));
        if (one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)v, 8) == 0) {
            P.ptr[P.nptr] = v[0];
            memcpy(&P.size[P.nptr++], a.b, 8);
            st_allocs++;
        }
        a.n = 0;
        put64(&a, sizeof ptx);
        put(&a, ptx, sizeof ptx);
        if (one_sync(&s, FG_OP_cuModuleLoadData, &a, ctx, (uint8_t *)v, 8) == 0) {
            uint64_t mod = v[0];
            pool_add(&P, 4, mod);
            st_modules++;
            static const char *fns[] = {"fg_vadd", "fg_fill_u32"};
            for (int k = 0; k < 2; k++) {
                a.n = 0;
                put64(&a, mod);
                put32(&a, (uint32_t)strlen(fns[k]) + 1);
                put(&a, fns[k], strlen(fns[k]) + 1);
                if (one_sync(&s, FG_OP_cuModuleGetFunction, &a, ctx, (uint8_t *)v, 8) == 0) {
                    pool_add(&P, 5, v[0]);
                    st_functions++;
                }
            }
            a.n = 0;
            put64(&a, mod);
            put32(&a, sizeof "fg_magic");
            put(&a, "fg_magic", sizeof "fg_magic");
            if (one_sync(&s, FG_OP_cuModuleGetGlobal_v2, &a, ctx, (uint8_t *)v, 16) == 0 && P.nptr < POOL) {
                P.ptr[P.nptr] = v[0];
                P.size[P.nptr++] = v[1];
            }
        }
        free(a.b);
    }
    int steps = 1 + (int)rndn(30);
    int expect_rc = -2; /* -2: any of 0 / -1 */
    for (int step = 0; step < steps && !s.closed; step++) {
        int kind = (int)rndn(100);
        buf pl = {0};
        st_frames++;
        if (kind < 86) { /* a well-formed batch of records with random arguments */
            int want = chance(75);
            int nrec = (int)rndn(5) + (want ? 1 : 0);
            if (!want && nrec == 0) nrec = 1;
            uint64_t alloc_size = 0;
            unsigned last_op = 0;
            int certain_bad = 0;
            if (ctx && chance(70)) {
                buf c = {0};
                put64(&c, chance(90) ? ctx : pick_handle(&P, 1));
                add_record(&pl, FG_OP_SET_CTX, &c);
                free(c.b);
            }
            for (int k = 0; k < nrec; k++) {
                int is_last = k == nrec - 1;
                unsigned op;
                if (want && is_last) op = sync_ops[rndn(n_sync)];
                else op = async_ops[rndn(n_async)];
                /* favour the interesting ops */
                if (want && is_last && chance(40)) {
                    static const unsigned fav[] = {FG_OP_cuMemAlloc_v2, FG_OP_cuModuleLoadData,
                                                   FG_OP_cuModuleGetFunction, FG_OP_cuStreamCreate,
                                                   FG_OP_cuEventCreate, FG_OP_cuMemcpyDtoH_v2,
                                                   FG_OP_cuModuleGetGlobal_v2, FG_OP_cuMemcpyHtoD_v2};
                    op = fav[rndn(sizeof fav / sizeof *fav)];
                }
                if (!want && !is_last && chance(3)) op = sync_ops[rndn(n_sync)];
                if (chance(2)) { /* misplaced synchronous record */
                    op = sync_ops[rndn(n_sync)];
                    if (!(want && is_last)) certain_bad = 1;
                }
                buf a = {0};
                certain_bad |= build_args(&P, op, &a);
                if (op == FG_OP_cuMemAlloc_v2 && a.n >= 8) memcpy(&alloc_size, a.b, 8);
                if (chance(3) && a.n) { /* cut the arguments short */
                    a.n = rndn(a.n); /* CLOSE or an error result, as above */
                }
                add_record(&pl, op, &a);
                st_records++;
                free(a.b);
                last_op = op;
            }
            s.seq++;
            send_frame(&s, FG_T_BATCH, want ? FG_F_WANT_REPLY : 0, &pl, s.seq);
            if (want) await_reply(&s, &P, last_op, alloc_size, certain_bad);
            else if (certain_bad) expect_close(&s, "async batch with a malformed record");
            if (certain_bad) expect_rc = -1;
            if (s.closed) expect_rc = -1;
        } else if (kind < 92) { /* PING */
            add_record(&pl, FG_OP_PING, &(buf){0});
            s.seq++;
            send_frame(&s, FG_T_BATCH, FG_F_WANT_REPLY, &pl, s.seq);
            await_reply(&s, &P, FG_OP_PING, 0, 0);
            if (s.closed) expect_rc = -1;
        } else { /* a frame that is certainly a protocol error */
            const char *what = "?";
            uint8_t hb[FG_HEADER_SIZE];
            fg_header h = {FG_MAGIC, FG_T_BATCH, 0, 0, ++s.seq};
            buf raw = {0};
            switch (rndn(11)) {
            case 0: what = "bad magic"; h.magic ^= 1u << rndn(32); break;
            case 1: what = "non-BATCH type"; h.type = (uint16_t)(1 + rndn(6)); if (h.type == FG_T_BATCH) h.type = FG_T_HELLO; break;
            case 2: what = "unknown type"; h.type = (uint16_t)(7 + rndn(1000)); break;
            case 3: what = "unknown flags"; h.flags = (uint16_t)(2 + rndn(0xfffe)); break;
            case 4: what = "oversized"; h.length = FG_DEFAULT_MAX_FRAME + 1 + (uint32_t)rndn(1000); break;
            case 5: { /* unknown op */
                what = "unknown op";
                static const uint16_t bad_ops[] = {0, 3, 15, FG_OP_LIMIT, 200, 0xffff};
                add_record(&pl, bad_ops[rndn(6)], &(buf){0});
                h.flags = chance(50) ? FG_F_WANT_REPLY : 0;
                break;
            }
            case 6: /* WANT_REPLY without a final sync record */
                what = "WANT_REPLY without sync";
                if (chance(50)) add_record(&pl, async_ops[rndn(n_async)], &(buf){0});
                h.flags = FG_F_WANT_REPLY;
                break;
            case 7: { /* truncated record header */
                what = "truncated record header";
                add_record(&pl, FG_OP_PING, &(buf){0});
                pl.n = 1 + rndn(7);
                h.flags = FG_F_WANT_REPLY;
                break;
            }
            case 8: { /* record longer than the frame */
                what = "record longer than its frame";
                buf a = {0};
                put64(&a, rnd());
                add_record(&pl, FG_OP_PING, &a);
                uint32_t bogus = 9 + (uint32_t)rndn(1u << 20);
                memcpy(pl.b + 4, &bogus, 4);
                h.flags = FG_F_WANT_REPLY;
                free(a.b);
                break;
            }
            case 9: /* garbage */
                what = "garbage";
                for (int k = 0; k < 16; k++) hb[k] = (uint8_t)rnd();
                memcpy(hb, "GET ", 4);
                put(&raw, hb, 16);
                break;
            default: /* sync record in a batch without WANT_REPLY */
                what = "sync record without WANT_REPLY";
                add_record(&pl, FG_OP_PING, &(buf){0});
                break;
            }
            if (raw.n) {
                send_all(&s, raw.b, raw.n);
            } else {
                if (!h.length) h.length = (uint32_t)pl.n;
                fg_header_encode(&h, hb);
                send_all(&s, hb, sizeof hb);
                if (h.length == pl.n) send_all(&s, pl.b, pl.n);
            }
            free(raw.b);
            expect_close(&s, what);
            if (s.closed && !strstr(s.close_reason, "protocol error"))
                fail("%s: CLOSE reason '%s' does not say protocol error", what, s.close_reason);
            expect_rc = -1;
        }
        free(pl.b);
    }
    int rc;
    if (!s.closed) { /* a sync point: did an earlier async batch end the session? */
        buf pl = {0};
        add_record(&pl, FG_OP_PING, &(buf){0});
        s.seq++;
        send_frame(&s, FG_T_BATCH, FG_F_WANT_REPLY, &pl, s.seq);
        free(pl.b);
        pools none;
        memset(&none, 0, sizeof none);
        await_reply(&s, &none, FG_OP_PING, 0, 0);
        if (s.closed) expect_rc = -1;
    }
    if (!s.closed && use_ctl) { /* the node server ends the session */
        const char why[] = "lease expired (fuzz)";
        if (write(s.ctl_w, why, sizeof why - 1) < 0) exit(2);
        expect_close(&s, "control close");
        if (!strstr(s.close_reason, "lease expired (fuzz)")) fail("control CLOSE reason '%s'", s.close_reason);
        expect_rc = 1;
        st_ctl++;
    } else if (!s.closed && chance(20)) { /* a partial frame, then disconnect */
        uint8_t hb[FG_HEADER_SIZE];
        fg_header h = {FG_MAGIC, FG_T_BATCH, FG_F_WANT_REPLY, 64 + (uint32_t)rndn(1u << 26), ++s.seq};
        fg_header_encode(&h, hb);
        uint8_t junk[40];
        for (size_t k = 0; k < sizeof junk; k++) junk[k] = (uint8_t)rnd();
        if (rndn(2)) { /* a whole header, then less payload than it promises */
            send_all(&s, hb, sizeof hb);
            send_all(&s, junk, rndn(sizeof junk));
        } else { /* part of a header */
            send_all(&s, hb, rndn(sizeof hb));
        }
        expect_rc = 0;
    } else if (!s.closed) {
        expect_rc = 0;
    }
    rc = session_end(&s);
    if (expect_rc != -2 && rc != expect_rc)
        fail("fgs_serve returned %d, want %d (reason: %s)", rc, expect_rc, s.sr.reason);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <libfargpu_sim.so> [sessions] [seed]\n", argv[0]);
        return 2;
    }
    g_sim = argv[1];
    unsigned sessions = argc > 2 ? (unsigned)atoi(argv[2]) : 300;
    if (argc > 3) rng_state ^= strtoull(argv[3], NULL, 0);
    safe_images = getenv("FG_FUZZ_SAFE_IMAGES") && atoi(getenv("FG_FUZZ_SAFE_IMAGES"));
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    setenv("FARGPU_SIM_MEM_BYTES", "4294967296", 0); /* 4 GiB simulated: keeps OOM paths reachable */
    for (unsigned op = 1; op < FG_OP_LIMIT; op++) {
        int c = fg_op_class(op);
        if (c == 1) sync_ops[n_sync++] = op;
        else if (c == 2) async_ops[n_async++] = op;
        if (c && !layout[op]) {
            fprintf(stderr, "op %u (%s) has no argument layout in fuzz_server.c\n", op, fg_op_name(op));
            return 2;
        }
    }
    char err[512];
    fgs_session *probe = fgs_open(g_sim, 0, 0, err, sizeof err);
    if (!probe) {
        printf("FAIL: fgs_open(%s): %s\n", g_sim, err);
        return 1;
    }
    fgs_close(probe);
    uint64_t baseline = 0;
    leak_check(&baseline);
    kernel_check();
    for (unsigned i = 1; i <= sessions && failures < 20; i++) fuzz_session(i);
    cur_session = 0;
    uint64_t after = probe_free();
    uint64_t direct = sim_free_direct();
    if (after != baseline || direct != baseline)
        fail("leak across the fuzz sessions: free %" PRIu64 " (sim: %" PRIu64 "), baseline %" PRIu64, after, direct,
             baseline);
    printf("fuzz_server: %u sessions, %lu frames, %lu records, %lu replies (%lu successful), %lu CLOSEs, %lu control "
           "closes, %lu deferred errors; deep paths: %lu allocs, %lu modules, %lu functions\n",
           sessions, st_frames, st_records, st_replies, st_ok_results, st_closes, st_ctl, st_deferred, st_allocs,
           st_modules, st_functions);
    if (st_allocs == 0 || st_modules == 0 || st_functions == 0)
        fail("the fuzzer never reached allocations / modules / functions: the argument layouts are stale");
    (void)st_launch_ok;
    printf("fuzz_server: %d failures\n", failures);
    return failures ? 1 : 0;
}
