/* fuzz_server.c — the replay engine (server/replay, server/generated, protocol/c) under ASan + UBSan, serving
 * a scripted and randomised client over a socketpair, on the simulated device (libfargpu_sim.so).
 *
 *   fuzz_server <libfargpu_sim.so> [sessions, default 300] [seed]
 *
 * 1. Leak check: a session retains the primary context, allocates 3 × 5 MiB (cuMemAlloc_v2 after SET_CTX)
 *    and disconnects; fgs_close must give the memory back: a fresh session's cuMemGetInfo_v2 sees the
 *    baseline free memory again (and so does the sim itself, asked directly through dlsym).
 * 2. Kernel check, scripted: module images are content-addressed (server/replay/image.c), so a load naming the
 *    test PTX's SHA-256 before any upload answers FG_RESULT_NEED_IMAGE, an upload whose bytes do not hash to
 *    the name is refused (CUDA_ERROR_INVALID_IMAGE), an upload in IMAGE_CHUNK records then the load gives a
 *    module whose kernel fills memory; a library loaded by the name alone comes from the node's cache, and
 *    its kernel (cuLibraryGetKernel, cuKernelGetFunction) launches through cuLaunchKernelEx.
 * 3. Fuzz: `sessions` sessions, each fgs_open → fgs_serve (in a thread) → fgs_close, fed a sequence of frames:
 *    batches of records built from the op table (protocol/c/generated/fg_ops.h) with argument layouts read
 *    off server/generated/dispatch.c (one u8 "want" flag per output pointer, sometimes 0 so the driver gets
 *    NULL) and the custom ops, filled with live handles harvested from replies (contexts, streams, events,
 *    modules, functions, libraries, kernels, graphs, pools), handles of the server's pointer-like shape with a
 *    wrong salt, kind or index, device pointers in, at the edge of and far outside real allocations, random
 *    lengths, launch attributes, module/library loads (uploads in order, out of order, oversized chunks,
 *    wrong hashes, names the server lacks, hostile extra_len; the PTX module with the sim's test kernels,
 *    mutated PTX and hostile images); then structurally bad frames (bad magic, non-BATCH type, oversized,
 *    truncated, unknown op, misplaced sync records, garbage). Asserts: the server never crashes (ASan/UBSan
 *    abort), never hangs (alarm), answers every WANT_REPLY batch with a REPLY of the same seq whose length adds
 *    up (after any OUTPUT frames), or ends with CLOSE; a frame that is certainly a protocol error gets a CLOSE
 *    frame and fgs_serve returns -1; a disconnect returns 0; a control-fd close sends CLOSE and returns 1; a
 *    load whose answer is certain gets it (NEED_IMAGE for an image the server cannot have, INVALID_IMAGE for
 *    a wrong hash, neither for the test PTX it holds).
 *    Some sessions get a callback connection (fuzz_callback_peer.h), sometimes a misbehaving one; in those a
 *    scripted host function after an async device→host copy on its stream must carry the copy in its RUN
 *    message and leave it out of the next reply (callback_check).
 * 4. Leak check again after all fuzz sessions: the sim's free memory is back at the baseline.
 * LeakSanitizer (part of ASan) checks host-memory leaks of the engine at exit. The node's module cache
 * (FARGPU_MODULE_CACHE) is a temporary directory, removed at exit, or "off" for some sessions.
 * FG_FUZZ_SAFE_IMAGES=1 leaves hostile module images out (to tell a driver-side image-bounds finding from
 * others). */
#include <cuda.h>
#include <dirent.h>
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

#include "fg_handles.h"
#include "fg_ops.h"
#include "fg_sha256.h"
#include "fg_wire.h"
#include "fgs_public.h"

#ifndef FG_T_OUTPUT /* an enumerator of fg_wire.h (invisible to #ifndef): the same value */
#define FG_T_OUTPUT 7
#endif

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

/* ---------------------------------------------------------------- statistics ---- */
static unsigned long st_replies, st_ok_results, st_closes, st_allocs, st_modules, st_functions, st_libraries,
    st_kernels, st_launch_ok, st_frames, st_records, st_ctl, st_deferred, st_chunks, st_need_image,
    st_refused_images, st_outputs, st_cb_sessions, st_cb_runs, st_cb_copies;

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
/* FG_FUZZ_SAFE_IMAGES=1 leaves out the hostile module images. */
static int safe_images;

/* The node's module cache: a directory of this run (cache_on) or "off". Changed only between sessions, while
 * no server thread runs (the engine reads the variable with getenv). */
static char cache_path[4096];
static int cache_on;

static void set_cache(int on) {
    cache_on = on && cache_path[0];
    setenv("FARGPU_MODULE_CACHE", cache_on ? cache_path : "off", 1);
}

static int session_start(session *s, int with_ctl, unsigned long long vram_quota) {
    memset(s, 0, sizeof *s);
    char err[512];
    s->sr.S = fgs_open(g_sim, vram_quota, 0, err, sizeof err);
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
    if (h->type != FG_T_REPLY && h->type != FG_T_CLOSE && h->type != FG_T_OUTPUT)
        fail("server sent frame type %u", h->type);
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

/* The next REPLY or CLOSE (or 0 on EOF), passing over OUTPUT frames: bytes the device printed, which the server
 * sends before a REPLY (none here: the fuzzer installs no output fd, but a client must accept them). */
static int read_answer(session *s, fg_header *h, uint8_t **payload) {
    for (;;) {
        int t = read_frame(s, h, payload);
        if (t != FG_T_OUTPUT) return t;
        st_outputs++;
        free(*payload);
        *payload = NULL;
    }
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
static void put8(buf *o, uint8_t v) { put(o, &v, 1); }
static void put32(buf *o, uint32_t v) { put(o, &v, 4); }
static void put64(buf *o, uint64_t v) { put(o, &v, 8); }

static void add_record(buf *o, unsigned op, const buf *args) {
    uint16_t op16 = (uint16_t)op, fl = 0;
    put(o, &op16, 2);
    put(o, &fl, 2);
    put32(o, (uint32_t)args->n);
    put(o, args->b, args->n);
    static const uint8_t zero[8];
    put(o, zero, fg_pad8(args->n) - args->n);
}

/* Argument layouts: i 4-byte int, h u16, b u8, w u8 "want" flag of an output pointer (mostly 1, sometimes 0:
 * the driver gets NULL), q size_t / u64, r a 2D pitch or extent (mostly small), p device pointer,
 * a allocation size, C S E M F L N G X O handle ids (context, stream, event, module, function, library,
 * kernel, graph, graph exec, memory pool), s string (u32 len incl. NUL + bytes; function/global names),
 * z string (a PCI bus id), B u64 n + n bytes (host data), K launch dims (7 × u32), P u32 n + params,
 * x u32 n + n launch attributes (CUlaunchAttribute), V u8 present + CUstreamAttrValue,
 * H an image reference (sha256[32], u64 size, u32 extra_len, extra) after IMAGE_CHUNK records that may
 * upload it, Y one IMAGE_CHUNK record (sha256[32], u64 total, u64 offset, u32 len, bytes). */
static const char *layout[FG_OP_LIMIT] = {
    [FG_OP_SET_CTX] = "C",
    [FG_OP_PING] = "",
    [FG_OP_IMAGE_CHUNK] = "Y",
    [FG_OP_cuCtxCreate_v4] = "ii",
    [FG_OP_cuCtxDestroy_v2] = "C",
    [FG_OP_cuCtxDisablePeerAccess] = "C",
    [FG_OP_cuCtxEnablePeerAccess] = "Ci",
    [FG_OP_cuCtxGetApiVersion] = "Cw",
    [FG_OP_cuCtxGetCacheConfig] = "w",
    [FG_OP_cuCtxGetDevice] = "w",
    [FG_OP_cuCtxGetDevice_v2] = "wC",
    [FG_OP_cuCtxGetFlags] = "w",
    [FG_OP_cuCtxGetId] = "Cw",
    [FG_OP_cuCtxGetLimit] = "wi",
    [FG_OP_cuCtxGetSharedMemConfig] = "w",
    [FG_OP_cuCtxGetStreamPriorityRange] = "ww",
    [FG_OP_cuCtxResetPersistingL2Cache] = "",
    [FG_OP_cuCtxSetCacheConfig] = "i",
    [FG_OP_cuCtxSetFlags] = "i",
    [FG_OP_cuCtxSetLimit] = "iq",
    [FG_OP_cuCtxSetSharedMemConfig] = "i",
    [FG_OP_cuCtxSynchronize] = "",
    [FG_OP_cuCtxSynchronize_v2] = "C",
    [FG_OP_cuDeviceCanAccessPeer] = "wii",
    [FG_OP_cuDeviceComputeCapability] = "wwi",
    [FG_OP_cuDeviceGet] = "wi",
    [FG_OP_cuDeviceGetAttribute] = "wii",
    [FG_OP_cuDeviceGetByPCIBusId] = "wz",
    [FG_OP_cuDeviceGetCount] = "w",
    [FG_OP_cuDeviceGetDefaultMemPool] = "wi",
    [FG_OP_cuDeviceGetMemPool] = "wi",
    [FG_OP_cuDeviceGetName] = "ii",
    [FG_OP_cuDeviceGetP2PAttribute] = "wiii",
    [FG_OP_cuDeviceGetPCIBusId] = "ii",
    [FG_OP_cuDeviceGetTexture1DLinearMaxWidth] = "wiii",
    [FG_OP_cuDeviceGetUuid_v2] = "wi",
    [FG_OP_cuDevicePrimaryCtxGetState] = "iww",
    [FG_OP_cuDevicePrimaryCtxRelease_v2] = "i",
    [FG_OP_cuDevicePrimaryCtxReset_v2] = "i",
    [FG_OP_cuDevicePrimaryCtxRetain] = "wi",
    [FG_OP_cuDevicePrimaryCtxSetFlags_v2] = "ii",
    [FG_OP_cuDeviceSetMemPool] = "iO",
    [FG_OP_cuDeviceTotalMem_v2] = "wi",
    [FG_OP_cuEventCreate] = "wi",
    [FG_OP_cuEventDestroy_v2] = "E",
    [FG_OP_cuEventElapsedTime_v2] = "wEE",
    [FG_OP_cuEventQuery] = "E",
    [FG_OP_cuEventRecord] = "ES",
    [FG_OP_cuEventRecordWithFlags] = "ESi",
    [FG_OP_cuEventSynchronize] = "E",
    [FG_OP_cuFuncGetAttribute] = "wiF",
    [FG_OP_cuFuncGetModule] = "wF",
    [FG_OP_cuFuncIsLoaded] = "wF",
    [FG_OP_cuFuncLoad] = "F",
    [FG_OP_cuFuncSetAttribute] = "Fii",
    [FG_OP_cuFuncSetCacheConfig] = "Fi",
    [FG_OP_cuFuncSetSharedMemConfig] = "Fi",
    [FG_OP_cuGraphCreate] = "wi",
    [FG_OP_cuGraphDestroy] = "G",
    [FG_OP_cuGraphExecDestroy] = "X",
    [FG_OP_cuGraphGetNodes] = "Gr",
    [FG_OP_cuGraphInstantiateWithFlags] = "wGq",
    [FG_OP_cuGraphLaunch] = "XS",
    [FG_OP_cuGraphUpload] = "XS",
    [FG_OP_cuKernelGetAttribute] = "wiNi",
    [FG_OP_cuKernelGetFunction] = "N",
    [FG_OP_cuKernelGetLibrary] = "wN",
    [FG_OP_cuKernelSetAttribute] = "iiNi",
    [FG_OP_cuKernelSetCacheConfig] = "Nii",
    [FG_OP_cuLaunchKernel] = "FKSP",
    [FG_OP_cuLaunchKernelEx] = "FKSxP",
    [FG_OP_cuLibraryGetGlobal] = "wwLs",
    [FG_OP_cuLibraryGetKernel] = "Ls",
    [FG_OP_cuLibraryGetKernelCount] = "wL",
    [FG_OP_cuLibraryGetModule] = "wL",
    [FG_OP_cuLibraryLoadData] = "H",
    [FG_OP_cuLibraryUnload] = "L",
    [FG_OP_cuMemAlloc_v2] = "a",
    [FG_OP_cuMemFree_v2] = "p",
    [FG_OP_cuMemGetAddressRange_v2] = "p",
    [FG_OP_cuMemGetInfo_v2] = "",
    [FG_OP_cuMemPoolTrimTo] = "Oq",
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
    [FG_OP_cuMemsetD2D16Async] = "prhrrS",
    [FG_OP_cuMemsetD2D16_v2] = "prhrr",
    [FG_OP_cuMemsetD2D32Async] = "prirrS",
    [FG_OP_cuMemsetD2D32_v2] = "prirr",
    [FG_OP_cuMemsetD2D8Async] = "prbrrS",
    [FG_OP_cuMemsetD2D8_v2] = "prbrr",
    [FG_OP_cuMemsetD32Async] = "piqS",
    [FG_OP_cuMemsetD32_v2] = "piq",
    [FG_OP_cuMemsetD8Async] = "pbqS",
    [FG_OP_cuMemsetD8_v2] = "pbq",
    [FG_OP_cuModuleGetFunction] = "Ms",
    [FG_OP_cuModuleGetFunctionCount] = "wM",
    [FG_OP_cuModuleEnumerateFunctions] = "Mi", /* u64 module, u32 capacity (server/replay/module.c) */
    [FG_OP_cuModuleGetGlobal_v2] = "wwMs",
    [FG_OP_cuModuleGetLoadingMode] = "w",
    [FG_OP_cuModuleLoadData] = "H",
    [FG_OP_cuModuleLoadDataEx] = "H",
    [FG_OP_cuModuleUnload] = "M",
    [FG_OP_cuOccupancyAvailableDynamicSMemPerBlock] = "wFii",
    [FG_OP_cuOccupancyMaxActiveBlocksPerMultiprocessor] = "wFiq",
    [FG_OP_cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags] = "wFiqi",
    [FG_OP_cuOccupancyMaxActiveClusters] = "FKSx",
    [FG_OP_cuOccupancyMaxPotentialClusterSize] = "FKSx",
    [FG_OP_cuStreamBeginCapture_v2] = "Si",
    [FG_OP_cuStreamCopyAttributes] = "SS",
    [FG_OP_cuStreamCreate] = "wi",
    [FG_OP_cuStreamCreateWithPriority] = "wii",
    [FG_OP_cuStreamDestroy_v2] = "S",
    [FG_OP_cuStreamEndCapture] = "Sw",
    [FG_OP_cuStreamGetAttribute] = "Siw",
    [FG_OP_cuStreamGetCaptureInfo_v3] = "Sw",
    [FG_OP_cuStreamGetCtx] = "Sw",
    [FG_OP_cuStreamGetDevice] = "Sw",
    [FG_OP_cuStreamGetFlags] = "Sw",
    [FG_OP_cuStreamGetId] = "Sw",
    [FG_OP_cuStreamGetPriority] = "Sw",
    [FG_OP_cuStreamIsCapturing] = "Sw",
    [FG_OP_cuStreamQuery] = "S",
    [FG_OP_cuStreamSetAttribute] = "SiV",
    [FG_OP_cuStreamSynchronize] = "S",
    [FG_OP_cuStreamWaitEvent] = "SEi",
    [FG_OP_cuStreamWaitValue32_v2] = "Spii",
    [FG_OP_cuStreamWaitValue64_v2] = "Spqi",
    [FG_OP_cuStreamWriteValue32_v2] = "Spii",
    [FG_OP_cuStreamWriteValue64_v2] = "Spqi",
    [FG_OP_cuThreadExchangeStreamCaptureMode] = "i",
    [FG_OP_cuLaunchHostFunc] = "Sq",
    [FG_OP_cuStreamAddCallback] = "Sq",
};

/* ---------------------------------------------------------------- module images ---- */

/* A PTX module with the sim's test kernels (tests/c/kernels/test_kernels.cu) and a global. */
static const char ptx[] =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .global .align 4 .u32 fg_magic = 305419896;\n"
    ".visible .entry fg_vadd(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)\n{\n ret;\n}\n"
    ".visible .entry fg_fill_u32(.param .u64 p, .param .u32 v, .param .u64 n)\n{\n ret;\n}\n";
static uint8_t ptx_sha[32]; /* its name: SHA-256 of its sizeof ptx bytes (NUL included) */

#define IMG_MAX 1024

/* Names (SHA-256 and size) of images uploaded under their true hash: a load may name one without uploading it
 * (found in the node's cache if that upload was verified, else NEED_IMAGE). */
#define KNOWN 16
static struct {
    uint8_t sha[32];
    uint64_t n;
} known[KNOWN];
static unsigned n_known;

static void remember_image(const uint8_t sha[32], uint64_t n) {
    unsigned i = n_known < KNOWN ? n_known++ : (unsigned)rndn(KNOWN);
    memcpy(known[i].sha, sha, 32);
    known[i].n = n;
}

/* What the result of a batch's final record must be, where it is certain (image loads). */
enum {
    EXP_ANY,
    EXP_NEED_IMAGE,    /* FG_RESULT_NEED_IMAGE: the server cannot have the image */
    EXP_INVALID_IMAGE, /* CUDA_ERROR_INVALID_IMAGE: a wrong hash or an impossible size */
    EXP_NOT_NEED,      /* the image arrived complete: anything but NEED_IMAGE */
    EXP_HAVE_IMAGE,    /* the test PTX, which the server holds: neither NEED_IMAGE nor INVALID_IMAGE */
};
static const char *exp_name[] = {"any", "NEED_IMAGE", "INVALID_IMAGE", "not NEED_IMAGE", "a loaded image"};
static const char *load_case = "?"; /* the last image load built, for failure messages */

/* Image bytes: the test PTX (*pristine), mutated PTX, or (unless safe_images) hostile bytes. */
static size_t make_image(uint8_t *img, int *pristine) {
    int r = (int)rndn(safe_images ? 8 : 13);
    *pristine = r < 4;
    memcpy(img, ptx, sizeof ptx);
    if (r < 4) return sizeof ptx;
    if (r < 8) { /* PTX-ish text, mutated, NUL-terminated */
        for (int k = 0; k < 4; k++) img[rndn(sizeof ptx - 1)] = (uint8_t)(32 + rndn(95));
        return sizeof ptx;
    }
    /* hostile images: the driver finds an image's end from its own headers (module.c image_fits checks them) */
    uint64_t n = 1 + rndn(256);
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
        uint16_t em = 190, shent = 64, shnum = (uint16_t)(rndn(10)), strndx = 1;
        uint64_t shoff = 64 + rndn(4096);
        memcpy(img + 18, &em, 2);
        memcpy(img + 40, &shoff, 8);
        memcpy(img + 58, &shent, 2);
        memcpy(img + 60, &shnum, 2);
        memcpy(img + 62, &strndx, 2);
        break;
    }
    case 11: { /* a section table inside the image, its sections (or, with shnum 0, its count) maybe not */
        uint16_t em = 190, shent = 64, shnum = (uint16_t)rndn(4), strndx = 0;
        uint64_t shoff = 64, nsec = shnum ? shnum : 2;
        n = 64 + 64 * nsec + rndn(32);
        memset(img, 0, n);
        memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
        memcpy(img + 18, &em, 2);
        memcpy(img + 40, &shoff, 8);
        memcpy(img + 58, &shent, 2);
        memcpy(img + 60, &shnum, 2);
        memcpy(img + 62, &strndx, 2);
        for (uint64_t i = 0; i < nsec; i++) {
            uint8_t *sh = img + 64 + 64 * i;
            uint32_t type = chance(25) ? 8 /* SHT_NOBITS */ : (uint32_t)(1 + rndn(4));
            uint64_t off = chance(60) ? rndn(n) : n + rndn(4096);
            uint64_t size = chance(60) && off < n ? rndn(n - off + 1) : rnd();
            memcpy(sh + 4, &type, 4);
            memcpy(sh + 24, &off, 8);
            memcpy(sh + 32, &size, 8);
        }
        if (!shnum) { /* the real count in section 0's sh_size */
            uint64_t big = chance(50) ? nsec : rnd() >> rndn(64);
            memcpy(img + 64 + 32, &big, 8);
        }
        break;
    }
    default: /* random bytes, or a fatbin header that promises more than the image holds */
        if (chance(50) && n >= 16) {
            uint32_t magic = chance(80) ? 0xBA55ED50u : 0x466243B1u;
            uint16_t hsize = (uint16_t)(16 + rndn(32));
            uint64_t fsize = rndn(2) ? n : rnd();
            memcpy(img, &magic, 4);
            memcpy(img + 6, &hsize, 2);
            memcpy(img + 8, &fsize, 8);
        }
        break;
    }
    return n;
}

/* Image bytes no earlier upload can have had (a load of them answers NEED_IMAGE unless they arrive complete):
 * the PTX with a unique comment, or random bytes. */
static size_t fresh_image(uint8_t *img) {
    if (chance(50)) {
        int k = snprintf((char *)img, IMG_MAX, "%s// %016" PRIx64 "%016" PRIx64 "\n", ptx, rnd(), rnd());
        return (size_t)k + 1;
    }
    size_t n = 32 + rndn(224);
    for (size_t i = 0; i < n; i++) img[i] = (uint8_t)rnd();
    if (chance(30)) memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
    return n;
}

static void put_chunk(buf *pre, const uint8_t sha[32], uint64_t total, uint64_t off, const uint8_t *data,
                      uint32_t len) {
    buf c = {0};
    put(&c, sha, 32);
    put64(&c, total);
    put64(&c, off);
    put32(&c, len);
    put(&c, data, len);
    add_record(pre, FG_OP_IMAGE_CHUNK, &c);
    free(c.b);
    st_chunks++;
}

/* IMAGE_CHUNK records uploading img[0..n) under `sha` in `parts` in-order, non-empty pieces. */
static void put_upload(buf *pre, const uint8_t sha[32], const uint8_t *img, size_t n, unsigned parts) {
    if (parts > n) parts = (unsigned)n;
    if (!parts) parts = 1;
    size_t piece = (n + parts - 1) / parts;
    for (size_t off = 0; off < n; off += piece)
        put_chunk(pre, sha, n, off, img + off, (uint32_t)(off + piece < n ? piece : n - off));
}

/* A load record's arguments, naming an image: sha256[32], u64 size, u32 extra_len (0), no extra. */
static void put_image_ref(buf *a, const uint8_t sha[32], uint64_t n) {
    put(a, sha, 32);
    put64(a, n);
    put32(a, 0);
}

static uint64_t pick_image_size(void) {
    switch (rndn(6)) {
    case 0: return 0;
    case 1: return FG_MAX_IMAGE + 1 + rndn(1000);
    case 2: return UINT64_MAX - rndn(16);
    case 3: return FG_MAX_IMAGE;
    default: return 1 + rndn(1u << 20);
    }
}
static int size_ok(uint64_t n) { return n > 0 && n <= FG_MAX_IMAGE; }

/* An image load: IMAGE_CHUNK records into `pre` (they go right before the load record), the load's arguments
 * into `a`, and the result that is certain (*expect). Returns 1 when the record is certainly malformed. */
static int build_image_load(buf *pre, buf *a, int *expect) {
    uint8_t img[IMG_MAX], sha[32], name[32];
    int pristine = 0;
    size_t n;
    uint64_t size;
    int r = (int)rndn(100);
    if (r < 38) { /* a correct upload in 1..4 in-order chunks, then the load */
        n = make_image(img, &pristine);
        fg_sha256(img, n, sha);
        put_upload(pre, sha, img, n, 1 + (unsigned)rndn(4));
        remember_image(sha, n);
        memcpy(name, sha, 32);
        size = n;
        *expect = pristine ? EXP_HAVE_IMAGE : EXP_NOT_NEED;
        load_case = "a correct upload";
    } else if (r < 48) { /* the test PTX by name only: the node cache has it (kernel_check uploaded it) */
        memcpy(name, ptx_sha, 32);
        size = sizeof ptx;
        *expect = cache_on ? EXP_HAVE_IMAGE : EXP_NEED_IMAGE;
        load_case = cache_on ? "the test PTX by name (cache on)" : "the test PTX by name (cache off)";
    } else if (r < 54 && n_known) { /* an image uploaded before, by name only: cached or not */
        unsigned i = (unsigned)rndn(n_known);
        memcpy(name, known[i].sha, 32);
        size = known[i].n;
        *expect = EXP_ANY;
        load_case = "an earlier upload by name";
    } else if (r < 64) { /* an upload whose bytes do not hash to its name */
        n = make_image(img, &pristine);
        fg_sha256(img, n, name);
        int flips = 1 + (int)rndn(3);
        for (int k = 0; k < flips; k++) name[rndn(32)] ^= (uint8_t)(1 + rndn(255));
        put_upload(pre, name, img, n, 1 + (unsigned)rndn(4));
        size = n;
        *expect = EXP_INVALID_IMAGE;
        load_case = "an upload under a wrong hash";
    } else if (r < 72) { /* a name the server cannot have */
        for (int k = 0; k < 32; k++) name[k] = (uint8_t)rnd();
        size = pick_image_size();
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "a name the server cannot have";
    } else if (r < 84) { /* an upload that goes wrong: a chunk left out, two swapped, oversized, past the end, a
                          * total that changes midway (the image stays incomplete), or one sent twice (harmless) */
        n = fresh_image(img);
        fg_sha256(img, n, sha);
        memcpy(name, sha, 32);
        size = n;
        unsigned parts = 1 + (unsigned)rndn(5), k = 0;
        uint64_t off[8], len[8];
        size_t piece = (n + parts - 1) / parts;
        for (size_t o = 0; o < n; o += piece, k++) {
            off[k] = o;
            len[k] = o + piece < n ? piece : n - o;
        }
        int how = (int)rndn(6);
        unsigned j = (unsigned)rndn(how == 1 && k >= 2 ? k - 1 : k);
        *expect = how == 1 && k < 2 ? EXP_NOT_NEED : EXP_NEED_IMAGE; /* nothing to swap: a correct upload */
        static const char *hows[] = {"an upload missing a chunk", "an upload with two chunks swapped",
                                     "an upload with an oversized chunk", "an upload with a chunk past its end",
                                     "an upload whose total changes", "an upload with a chunk sent twice"};
        load_case = hows[how];
        for (unsigned i = 0; i < k; i++) {
            if (how == 0 && i == j) continue; /* left out */
            if (how == 1 && k >= 2 && i == j) { /* j + 1 before j */
                put_chunk(pre, sha, n, off[j + 1], img + off[j + 1], (uint32_t)len[j + 1]);
                put_chunk(pre, sha, n, off[j], img + off[j], (uint32_t)len[j]);
                i++;
                continue;
            }
            if (how == 2 && i == j) { /* the rest of the image and more: len > total - offset, refused */
                uint8_t big[IMG_MAX + 64];
                uint64_t rest = n - off[i];
                uint32_t extra = 1 + (uint32_t)rndn(32);
                memcpy(big, img + off[i], rest);
                for (uint32_t e = 0; e < extra; e++) big[rest + e] = (uint8_t)rnd();
                put_chunk(pre, sha, n, off[i], big, (uint32_t)rest + extra);
                continue;
            }
            if (how == 3 && i == j) { /* an offset past the total */
                put_chunk(pre, sha, n, n + 1 + rndn(1u << 20), img + off[i], (uint32_t)len[i]);
                continue;
            }
            if (how == 4 && i == j) { /* another total: the staging restarts, the rest no longer fits */
                put_chunk(pre, sha, n + 1 + rndn(64), off[i], img + off[i], (uint32_t)len[i]);
                continue;
            }
            put_chunk(pre, sha, n, off[i], img + off[i], (uint32_t)len[i]);
            if (how == 5 && i == j) { /* the same chunk again: refused, the upload goes on */
                put_chunk(pre, sha, n, off[i], img + off[i], (uint32_t)len[i]);
                *expect = EXP_NOT_NEED;
            }
        }
    } else if (r < 92) { /* a correct upload, but the load names another size (the upload stays staged: never
                          * the test PTX, whose loads by name must find it in the cache or not at all) */
        n = make_image(img, &pristine);
        if (pristine) n = fresh_image(img);
        fg_sha256(img, n, sha);
        put_upload(pre, sha, img, n, 1 + (unsigned)rndn(3));
        memcpy(name, sha, 32);
        do size = chance(50) ? n + 1 + rndn(64) : pick_image_size();
        while (size == n);
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "a correct upload, loaded under another size";
    } else { /* chunks with impossible totals (refused), or the start of a large one that never completes */
        n = fresh_image(img);
        fg_sha256(img, n, sha);
        memcpy(name, sha, 32);
        static const uint64_t totals[] = {0, FG_MAX_IMAGE + 1, UINT64_MAX, 32u << 20};
        uint64_t total = totals[rndn(chance(10) ? 4 : 3)];
        put_chunk(pre, sha, total, chance(80) ? 0 : rnd(), img, (uint32_t)n);
        size = chance(50) ? n : total;
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "chunks with an impossible or unfinished total";
    }
    put(a, name, 32);
    put64(a, size);
    int e = (int)rndn(100);
    if (e < 80) {
        put32(a, 0);
        return 0;
    }
    uint8_t extra[64];
    uint32_t k = 1 + (uint32_t)rndn(sizeof extra);
    for (uint32_t i = 0; i < k; i++) extra[i] = (uint8_t)rnd();
    if (e < 92) { /* extra bytes (JIT options), ignored by the server; sometimes fewer claimed than sent */
        put32(a, e < 88 ? k : (uint32_t)rndn(k));
        put(a, extra, k);
        return 0;
    }
    /* hostile extra_len: more than the record holds */
    *expect = EXP_ANY;
    put32(a, e < 97 ? k + 1 + (uint32_t)rndn(4096) : UINT32_MAX - (uint32_t)rndn(16));
    put(a, extra, k);
    return 1;
}

/* ---------------------------------------------------------------- live state and random arguments ---- */

/* Live things harvested from replies. */
#define POOL 32
typedef struct {
    uint64_t ids[FGH_LIMIT][POOL]; /* by handle kind (fg_handles.h) */
    int nids[FGH_LIMIT];
    uint64_t ptr[POOL], size[POOL];
    int nptr;
} pools;

static void pool_add(pools *P, int kind, uint64_t id) {
    if (!id) return;
    P->ids[kind][P->nids[kind] < POOL ? P->nids[kind]++ : (int)rndn(POOL)] = id;
}

static uint64_t pool_pick(pools *P, int kind) { return P->nids[kind] ? P->ids[kind][rndn(P->nids[kind])] : 0; }

/* A live id of any kind, 0 when there is none. */
static uint64_t any_live(pools *P) {
    int k = 1 + (int)rndn(FGH_LIMIT - 1);
    for (int i = 0; i < FGH_LIMIT - 1; i++, k = k % (FGH_LIMIT - 1) + 1)
        if (P->nids[k]) return pool_pick(P, k);
    return 0;
}

/* An id of the server's shape (server/replay/session.c make_id): a 16-byte-aligned user-space pointer with
 * bit 44 set, the kind in bits 38..43, 14 bits of the session's salt in bits 24..37, index + 1 in bits 4..23. */
static uint64_t shaped_id(int kind, uint64_t salt, uint64_t index1) {
    return (1ull << 44) | ((uint64_t)(kind & 0x3f) << 38) | ((salt & 0x3fff) << 24) | ((index1 & 0xfffff) << 4);
}

static uint64_t pick_handle(pools *P, int kind) {
    int r = (int)rndn(100);
    /* a library kernel stands for its function wherever the driver expects a CUfunction */
    if (kind == FGH_FUNCTION && r < 15 && P->nids[FGH_KERNEL]) return pool_pick(P, FGH_KERNEL);
    if (r < 65 && P->nids[kind]) return pool_pick(P, kind);
    if (r < 72) return 0;
    if (r < 77) { /* a live id of another kind */
        uint64_t v = any_live(P);
        if (v) return v;
    }
    uint64_t base = P->nids[kind] ? pool_pick(P, kind) : any_live(P);
    if (r < 88 && base) { /* a live id, altered */
        switch (rndn(8)) {
        case 0: return base ^ ((1 + rndn(0x3fff)) << 24);                               /* another salt */
        case 1: return base ^ ((1 + rndn(0x3f)) << 38);                                 /* another kind */
        case 2: return base + 16 * (1 + rndn(4));                                       /* a neighbouring index */
        case 3: return base | (1 + rndn(15));                                           /* not 16-byte aligned */
        case 4: return base | (1ull << (45 + rndn(19)));                                /* high bits */
        case 5: return base & ~(1ull << 44);                                            /* no mark bit */
        case 6: return base & ~(0xfffffull << 4);                                       /* index field 0 */
        default: return base | (0xfffffull << 4);                                       /* the last index */
        }
    }
    if (r < 91 && kind == FGH_STREAM) return rndn(2) ? 1 : 2; /* CU_STREAM_LEGACY / PER_THREAD */
    if (r < 96) { /* the right shape: this session's salt (or a random one), a small index (maybe live) or a huge one */
        uint64_t salt = base && chance(70) ? base >> 24 : rnd();
        return shaped_id(kind, salt, rndn(3) ? 1 + rndn(64) : 0x80000 + rndn(0x80000));
    }
    if (r < 98) return rnd() & 0x00007ffffffffff0ull; /* a pointer-like nothing */
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

static void put_cstr(buf *a, const char *s) {
    put32(a, (uint32_t)strlen(s) + 1);
    put(a, s, strlen(s) + 1);
}

/* A launch attribute (cuLaunchKernelEx, cluster occupancy): mostly a known id with a plausible value. */
static void put_launch_attr(pools *P, buf *a) {
    static const uint32_t ids[] = {
        CU_LAUNCH_ATTRIBUTE_IGNORE, CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW, CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
        CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY, CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT, CU_LAUNCH_ATTRIBUTE_PRIORITY, CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP,
        CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN, CU_LAUNCH_ATTRIBUTE_PREFERRED_CLUSTER_DIMENSION,
        CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE,
        CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT};
    CUlaunchAttribute at;
    uint8_t *raw = (uint8_t *)&at;
    for (size_t i = 0; i < sizeof at; i++) raw[i] = (uint8_t)rnd();
    uint32_t id = chance(92) ? ids[rndn(sizeof ids / sizeof *ids)] : (uint32_t)rnd();
    memcpy(raw, &id, 4); /* as bytes: an id outside the enum is the point */
    if (chance(75)) switch (id) {
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
        case CU_LAUNCH_ATTRIBUTE_PREFERRED_CLUSTER_DIMENSION:
            at.value.clusterDim.x = at.value.clusterDim.y = at.value.clusterDim.z = 1;
            break;
        case CU_LAUNCH_ATTRIBUTE_COOPERATIVE: at.value.cooperative = 0; break;
        case CU_LAUNCH_ATTRIBUTE_PRIORITY: at.value.priority = -(int)rndn(6); break;
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION:
            at.value.programmaticStreamSerializationAllowed = 1;
            break;
        case CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE:
            memset(&at.value, 0, sizeof at.value);
            at.value.clusterSchedulingPolicyPreference = (CUclusterSchedulingPolicy)rndn(3);
            break;
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT: /* virtual event ids: the server translates them */
            at.value.programmaticEvent.event = (CUevent)(uintptr_t)pick_handle(P, FGH_EVENT);
            break;
        case CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT:
            at.value.launchCompletionEvent.event = (CUevent)(uintptr_t)pick_handle(P, FGH_EVENT);
            break;
        case CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW:
            at.value.accessPolicyWindow.base_ptr = (void *)(uintptr_t)pick_ptr(P);
            at.value.accessPolicyWindow.num_bytes = (size_t)pick_size();
            break;
        default: break;
        }
    put(a, &at, sizeof at);
}

/* Append op's arguments (and, for image loads, the IMAGE_CHUNK records to send before it, into `pre`; the
 * certain result into *expect). Returns 1 when the record is certainly malformed. A malformed string may or may
 * not end the session: the generated decoders check a handle before reading the fields after it, so an unknown
 * handle answers CUDA_ERROR_INVALID_HANDLE first. */
static int build_args(pools *P, unsigned op, buf *a, buf *pre, int *expect) {
    const char *l = layout[op];
    for (; l && *l; l++) {
        switch (*l) {
        case 'i': put32(a, pick_int()); break;
        case 'h': { uint16_t v = (uint16_t)rnd(); put(a, &v, 2); break; }
        case 'b': put8(a, (uint8_t)rnd()); break;
        case 'w': put8(a, chance(85) ? 1 : chance(70) ? 0 : (uint8_t)(2 + rndn(254))); break;
        case 'q': put64(a, pick_size()); break;
        case 'r': put64(a, chance(85) ? rndn(chance(50) ? 64 : 4096) : pick_size()); break;
        case 'p': put64(a, pick_ptr(P)); break;
        case 'a': put64(a, chance(85) ? 1 + rndn(8u << 20) : pick_size()); break;
        case 'C': put64(a, pick_handle(P, FGH_CONTEXT)); break;
        case 'S': put64(a, pick_handle(P, FGH_STREAM)); break;
        case 'E': put64(a, pick_handle(P, FGH_EVENT)); break;
        case 'M': put64(a, pick_handle(P, FGH_MODULE)); break;
        case 'F': put64(a, pick_handle(P, FGH_FUNCTION)); break;
        case 'L': put64(a, pick_handle(P, FGH_LIBRARY)); break;
        case 'N': put64(a, pick_handle(P, FGH_KERNEL)); break;
        case 'G': put64(a, pick_handle(P, FGH_GRAPH)); break;
        case 'X': put64(a, pick_handle(P, FGH_GRAPHEXEC)); break;
        case 'O': put64(a, pick_handle(P, FGH_MEMORYPOOL)); break;
        case 's':
        case 'z': {
            static const char *names[] = {"fg_vadd", "fg_fill_u32", "fg_magic", "fg_scale", "nope", ""};
            static const char *bus[] = {"0000:00:00.0", "0000:01:00.0", "00000000:00:00.0", "", "zz:zz", "0:0"};
            const char *nm = *l == 's' ? names[rndn(6)] : bus[rndn(6)];
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
        case 'K': {
            for (int k = 0; k < 7; k++) {
                uint32_t v = chance(85) ? (k == 6 ? 0 : 1 + (uint32_t)rndn(k == 3 ? 256 : 4)) : pick_int();
                put32(a, v);
            }
            break;
        }
        case 'P': {
            /* fg_vadd / fg_fill_u32 take 28 / 24 bytes */
            uint32_t n = chance(70) ? 32 : chance(15) ? 0 : (uint32_t)rndn(64);
            put32(a, n);
            for (uint32_t k = 0; k + 8 <= n; k += 8) put64(a, chance(60) ? pick_ptr(P) : rndn(1u << 16));
            for (uint32_t k = n & ~7u; k < n; k++) put8(a, (uint8_t)rnd());
            break;
        }
        case 'x': {
            uint32_t na = chance(50) ? 0 : chance(90) ? 1 + (uint32_t)rndn(4) : (uint32_t)rndn(65);
            if (chance(2)) { /* more than the 64 the server takes: malformed, whatever follows */
                put32(a, 65 + (uint32_t)rndn(chance(50) ? 8 : 1u << 30));
                return 1;
            }
            put32(a, na);
            for (uint32_t k = 0; k < na; k++) put_launch_attr(P, a);
            break;
        }
        case 'V': {
            CUstreamAttrValue v;
            uint8_t *raw = (uint8_t *)&v;
            for (size_t i = 0; i < sizeof v; i++) raw[i] = (uint8_t)rnd();
            int present = chance(85);
            put8(a, (uint8_t)present);
            if (present) put(a, &v, sizeof v);
            break;
        }
        case 'H':
            if (build_image_load(pre, a, expect)) return 1;
            break;
        case 'Y': { /* one IMAGE_CHUNK on its own, under a random name */
            uint8_t sha[32], data[256];
            for (int k = 0; k < 32; k++) sha[k] = (uint8_t)rnd();
            uint64_t total = 1 + rndn(4096), off = 0;
            uint32_t len = (uint32_t)rndn(sizeof data), have = len;
            for (uint32_t k = 0; k < len; k++) data[k] = (uint8_t)rnd();
            switch (rndn(6)) {
            case 0: if (len > total) len = have = (uint32_t)total; break; /* starts an upload */
            case 1: off = rndn(total + 2); break;
            case 2: total = (const uint64_t[]){0, FG_MAX_IMAGE + 1, UINT64_MAX}[rndn(3)]; break;
            case 3: off = UINT64_MAX - rndn(16); break;
            case 4: /* len > total - offset */
                if (len < 2) len = have = 2;
                total = 1 + rndn(len - 1);
                break;
            default: /* len claims more bytes than the record holds: malformed */
                len = have + 1 + (uint32_t)(chance(50) ? rndn(64) : rnd());
                put(a, sha, 32);
                put64(a, total);
                put64(a, off);
                put32(a, len);
                put(a, data, have);
                return 1;
            }
            put(a, sha, 32);
            put64(a, total);
            put64(a, off);
            put32(a, len);
            put(a, data, len);
            break;
        }
        }
    }
    return 0;
}

static unsigned sync_ops[FG_OP_LIMIT], async_ops[FG_OP_LIMIT];
static unsigned n_sync, n_async;

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

/* After a WANT_REPLY batch: expect a REPLY with this seq (or a CLOSE). Harvests handles from the outputs. */
static void await_reply(session *s, pools *P, unsigned last_op, uint64_t alloc_size, int must_close, int expect) {
    fg_header h;
    uint8_t *p;
    int t = read_answer(s, &h, &p);
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
    uint64_t pos = 24 + out_len, prev_id = 0;
    for (uint32_t i = 0; i < n_later && pos <= h.length; i++) { /* u64 id, u64 length, bytes; ids increasing */
        uint64_t id, n;
        if (pos + 16 > h.length) { pos = UINT64_MAX; break; }
        memcpy(&id, p + pos, 8);
        memcpy(&n, p + pos + 8, 8);
        if (i && id <= prev_id) fail("REPLY copy ids not increasing: %" PRIu64 " after %" PRIu64, id, prev_id);
        if (n > FG_CHUNK) { pos = UINT64_MAX; break; }
        prev_id = id;
        pos += 16 + n;
    }
    if (pos != h.length) fail("REPLY lengths do not add up: %" PRIu64 " vs %u (n_later %u)", pos, h.length, n_later);
    if (result == FG_RESULT_NEED_IMAGE) st_need_image++;
    if (!must_close && expect != EXP_ANY) {
        int ok = expect == EXP_NEED_IMAGE      ? result == FG_RESULT_NEED_IMAGE
                 : expect == EXP_INVALID_IMAGE ? result == CUDA_ERROR_INVALID_IMAGE
                 : expect == EXP_NOT_NEED      ? result != FG_RESULT_NEED_IMAGE
                                               : result != FG_RESULT_NEED_IMAGE && result != CUDA_ERROR_INVALID_IMAGE;
        if (!ok)
            fail("%s (op %u) after %s: result %#x, want %s", fg_op_name(last_op), last_op, load_case, result,
                 exp_name[expect]);
        if (expect == EXP_INVALID_IMAGE && result == CUDA_ERROR_INVALID_IMAGE) st_refused_images++;
    }
    if (result == 0 && h.length >= 24 + out_len) {
        st_ok_results++;
        uint64_t v = 0;
        if (out_len >= 8) memcpy(&v, p + 24, 8);
        switch (last_op) {
        case FG_OP_cuDevicePrimaryCtxRetain:
        case FG_OP_cuCtxCreate_v4:
        case FG_OP_cuStreamGetCtx: pool_add(P, FGH_CONTEXT, v); break;
        case FG_OP_cuStreamCreate:
        case FG_OP_cuStreamCreateWithPriority: pool_add(P, FGH_STREAM, v); break;
        case FG_OP_cuEventCreate: pool_add(P, FGH_EVENT, v); break;
        case FG_OP_cuModuleLoadData:
        case FG_OP_cuModuleLoadDataEx:
            if (v) st_modules++;
            pool_add(P, FGH_MODULE, v);
            break;
        case FG_OP_cuFuncGetModule:
        case FG_OP_cuLibraryGetModule: pool_add(P, FGH_MODULE, v); break;
        case FG_OP_cuModuleGetFunction:
        case FG_OP_cuKernelGetFunction:
            if (v) st_functions++;
            pool_add(P, FGH_FUNCTION, v);
            break;
        case FG_OP_cuLibraryLoadData:
            if (v) st_libraries++;
            pool_add(P, FGH_LIBRARY, v);
            break;
        case FG_OP_cuKernelGetLibrary: pool_add(P, FGH_LIBRARY, v); break;
        case FG_OP_cuLibraryGetKernel:
            if (v) st_kernels++;
            pool_add(P, FGH_KERNEL, v);
            break;
        case FG_OP_cuGraphCreate:
        case FG_OP_cuStreamEndCapture: pool_add(P, FGH_GRAPH, v); break;
        case FG_OP_cuGraphInstantiateWithFlags: pool_add(P, FGH_GRAPHEXEC, v); break;
        case FG_OP_cuDeviceGetDefaultMemPool:
        case FG_OP_cuDeviceGetMemPool: pool_add(P, FGH_MEMORYPOOL, v); break;
        case FG_OP_cuStreamGetCaptureInfo_v3: /* u32 status, u32 n, u64 id, u64 graph, n nodes */
            if (out_len >= 24) {
                memcpy(&v, p + 24 + 16, 8);
                pool_add(P, FGH_GRAPH, v);
            }
            break;
        case FG_OP_cuMemAlloc_v2:
        case FG_OP_cuModuleGetGlobal_v2:
        case FG_OP_cuLibraryGetGlobal:
            if (out_len >= 8 && v) {
                uint64_t sz = alloc_size;
                if (last_op != FG_OP_cuMemAlloc_v2 && out_len >= 16) memcpy(&sz, p + 32, 8);
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
    int t = read_answer(s, &h, &p);
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
    int t = read_answer(s, &h, &p);
    if (t != FG_T_REPLY || h.length < 24) {
        fail("scripted op %u: no REPLY (%s)", op, t == FG_T_CLOSE ? "CLOSE" : "EOF");
        free(p);
        return -1;
    }
    uint32_t result;
    memcpy(&result, p, 4);
    uint64_t out_len;
    memcpy(&out_len, p + 16, 8);
    if (out && out_len >= out_n && h.length >= 24 + out_n) memcpy(out, p + 24, out_n);
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
    put8(&a, 1); /* want the context */
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

/* Load the test PTX as a module or library (op), uploading it first in `parts` chunks (0: by name only).
 * Returns the result; the id in *id. */
static int load_ptx(session *s, unsigned op, unsigned parts, uint64_t ctx, uint64_t *id) {
    buf pre = {0}, a = {0};
    if (parts) put_upload(&pre, ptx_sha, (const uint8_t *)ptx, sizeof ptx, parts);
    put_image_ref(&a, ptx_sha, sizeof ptx);
    *id = 0;
    int r = sync_after(s, &pre, op, &a, ctx, (uint8_t *)id, 8);
    free(pre.b);
    free(a.b);
    return r;
}

/* Look up a function (cuModuleGetFunction) or a library kernel (cuLibraryGetKernel): id, and the parameter count. */
static int get_entry(session *s, unsigned op, uint64_t owner, const char *name, uint64_t ctx, uint64_t *id,
                     uint32_t *nparams) {
    buf a = {0};
    put64(&a, owner);
    put_cstr(&a, name);
    uint8_t out[8 + 4] = {0};
    int r = one_sync(s, op, &a, ctx, out, sizeof out);
    free(a.b);
    memcpy(id, out, 8);
    memcpy(nparams, out + 8, 4);
    return r;
}

/* A session that only asks how much memory is free. */
static uint64_t probe_free(void) {
    session s;
    if (session_start(&s, 0, 0)) return 0;
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

/* The deep path works end to end: image upload and module load, function lookup, launch, copies; the node cache
 * and the library API (so the fuzzer's layouts are right and its random calls reach the sim). Runs with the
 * cache directory on and still empty. */
static void kernel_check(void) {
    session s;
    if (session_start(&s, 0, 0)) return;
    uint64_t ctx = retain_primary(&s), ptr = 0, mod = 0, fn = 0, lib = 0, kern = 0, kfn = 0;
    buf a = {0};
    put64(&a, 1u << 20);
    if (one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)&ptr, 8)) fail("kernel check: cuMemAlloc_v2");
    /* by name before any upload: the server does not have it */
    int r = load_ptx(&s, FG_OP_cuModuleLoadData, 0, ctx, &mod);
    if (r != (int)FG_RESULT_NEED_IMAGE) fail("kernel check: load of an image never sent: %#x, want NEED_IMAGE", r);
    /* uploaded under a name its bytes do not hash to: refused */
    buf pre = {0};
    uint8_t wrong[32];
    memcpy(wrong, ptx_sha, 32);
    wrong[31] ^= 1;
    put_upload(&pre, wrong, (const uint8_t *)ptx, sizeof ptx, 2);
    a.n = 0;
    put_image_ref(&a, wrong, sizeof ptx);
    r = sync_after(&s, &pre, FG_OP_cuModuleLoadData, &a, ctx, NULL, 0);
    if (r != CUDA_ERROR_INVALID_IMAGE) fail("kernel check: load under a wrong hash: %#x, want INVALID_IMAGE", r);
    /* uploaded in 3 chunks, then loaded */
    r = load_ptx(&s, FG_OP_cuModuleLoadData, 3, ctx, &mod);
    if (r || !mod) fail("kernel check: cuModuleLoadData: %d", r);
    uint32_t np = 0;
    r = get_entry(&s, FG_OP_cuModuleGetFunction, mod, "fg_fill_u32", ctx, &fn, &np);
    if (r || np != 3) fail("kernel check: cuModuleGetFunction: %d, %u params", r, np);
    /* the global, through want flags for both outputs, and its initial value */
    a.n = 0;
    put8(&a, 1);
    put8(&a, 1);
    put64(&a, mod);
    put_cstr(&a, "fg_magic");
    uint64_t g[2] = {0, 0};
    r = one_sync(&s, FG_OP_cuModuleGetGlobal_v2, &a, ctx, (uint8_t *)g, 16);
    uint32_t magic = 0;
    a.n = 0;
    put64(&a, g[0]);
    put64(&a, 4);
    int r2 = one_sync(&s, FG_OP_cuMemcpyDtoH_v2, &a, ctx, (uint8_t *)&magic, 4);
    if (r || g[1] != 4 || r2 || magic != 305419896u)
        fail("kernel check: cuModuleGetGlobal_v2: %d, %" PRIu64 " bytes, value %u (%d)", r, g[1], magic, r2);
    /* an output the caller does not want reaches the driver as NULL: cuDeviceGet(NULL, 0) is an error */
    a.n = 0;
    put8(&a, 0);
    put32(&a, 0);
    r = one_sync(&s, FG_OP_cuDeviceGet, &a, ctx, NULL, 0);
    if (r != CUDA_ERROR_INVALID_VALUE) fail("kernel check: cuDeviceGet without an output: %d", r);
    /* launch fg_fill_u32(p, 0xdeadbeef, 1000) then read 4 KiB back, in one batch */
    pre.n = 0;
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
    uint32_t back[4096];
    r = sync_after(&s, &pre, FG_OP_cuMemcpyDtoH_v2, &a, ctx, (uint8_t *)back, 4096);
    if (r || back[0] != 0xdeadbeef || back[999] != 0xdeadbeef || back[1000] != 0)
        fail("kernel check: fill + DtoH: %d, %x %x %x", r, back[0], back[999], back[1000]);
    /* a library by name only: the node cache has the image since the verified upload above */
    r = load_ptx(&s, FG_OP_cuLibraryLoadData, 0, ctx, &lib);
    if (r || !lib) fail("kernel check: cuLibraryLoadData from the node cache: %#x", r);
    else st_libraries++;
    r = get_entry(&s, FG_OP_cuLibraryGetKernel, lib, "fg_fill_u32", ctx, &kern, &np);
    if (r || !kern || np != 3) fail("kernel check: cuLibraryGetKernel: %d, %u params", r, np);
    else st_kernels++;
    a.n = 0;
    put64(&a, kern);
    r = one_sync(&s, FG_OP_cuKernelGetFunction, &a, ctx, (uint8_t *)&kfn, 8);
    if (r || !kfn) fail("kernel check: cuKernelGetFunction: %d", r);
    /* cuLaunchKernelEx on the kernel itself, with a priority attribute: fill [2048, 3048) with 0x600df00d */
    pre.n = 0;
    a.n = 0;
    put64(&a, kern);
    put(&a, dims, sizeof dims);
    put64(&a, 0);
    put32(&a, 1);
    CUlaunchAttribute at;
    memset(&at, 0, sizeof at);
    at.id = CU_LAUNCH_ATTRIBUTE_PRIORITY;
    at.value.priority = 0;
    put(&a, &at, sizeof at);
    put32(&a, 24);
    put64(&a, ptr + 8192);
    put64(&a, 0x600df00d);
    put64(&a, 1000);
    add_record(&pre, FG_OP_cuLaunchKernelEx, &a);
    a.n = 0;
    put64(&a, ptr);
    put64(&a, sizeof back);
    r = sync_after(&s, &pre, FG_OP_cuMemcpyDtoH_v2, &a, ctx, (uint8_t *)back, sizeof back);
    if (r || back[999] != 0xdeadbeef || back[2047] != 0 || back[2048] != 0x600df00d || back[3047] != 0x600df00d ||
        back[3048] != 0)
        fail("kernel check: cuLaunchKernelEx + DtoH: %d, %x %x %x %x", r, back[2047], back[2048], back[3047],
             back[3048]);
    free(pre.b);
    free(a.b);
    if (session_end(&s) != 0) fail("kernel check: fgs_serve: %s", s.sr.reason);
}

static void leak_check(uint64_t *baseline) {
    cur_session = 0;
    uint64_t free0 = probe_free();
    *baseline = free0;
    session s;
    if (session_start(&s, 0, 0)) return;
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

#include "fuzz_callback_peer.h" /* the callback connection's client end, and callback_check */

/* ---------------------------------------------------------------- the fuzz session ---- */

static void fuzz_session(unsigned idx) {
    cur_session = idx;
    int use_ctl = chance(10);
    set_cache(chance(75)); /* before the server thread starts */
    session s;
    if (session_start(&s, use_ctl, chance(15) ? (1 + rndn(64)) << 20 : 0)) return; /* sometimes a VRAM quota */
    pools P;
    memset(&P, 0, sizeof P);
    uint64_t ctx = 0;
    if (chance(90)) {
        ctx = retain_primary(&s);
        pool_add(&P, FGH_CONTEXT, ctx);
    }
    if (ctx && chance(50)) { /* live state to aim at: an allocation, a module and its functions and global */
        buf a = {0};
        uint64_t v[2] = {0, 0}, mod = 0;
        put64(&a, 1 + rndn(4u << 20));
        if (one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)v, 8) == 0) {
            P.ptr[P.nptr] = v[0];
            memcpy(&P.size[P.nptr++], a.b, 8);
            st_allocs++;
        }
        if (load_ptx(&s, FG_OP_cuModuleLoadData, cache_on && chance(50) ? 0 : 1 + (unsigned)rndn(3), ctx, &mod) == 0) {
            pool_add(&P, FGH_MODULE, mod);
            st_modules++;
            static const char *fns[] = {"fg_vadd", "fg_fill_u32"};
            for (int k = 0; k < 2; k++) {
                uint32_t np;
                if (get_entry(&s, FG_OP_cuModuleGetFunction, mod, fns[k], ctx, &v[0], &np) == 0) {
                    pool_add(&P, FGH_FUNCTION, v[0]);
                    st_functions++;
                }
            }
            a.n = 0;
            put8(&a, 1);
            put8(&a, 1);
            put64(&a, mod);
            put_cstr(&a, "fg_magic");
            if (one_sync(&s, FG_OP_cuModuleGetGlobal_v2, &a, ctx, (uint8_t *)v, 16) == 0 && P.nptr < POOL) {
                P.ptr[P.nptr] = v[0];
                P.size[P.nptr++] = v[1];
            }
        }
        free(a.b);
    }
    if (ctx && chance(40)) { /* a library, its kernels, and a function of one */
        uint64_t lib = 0, kern = 0, kfn = 0;
        if (load_ptx(&s, FG_OP_cuLibraryLoadData, cache_on && chance(50) ? 0 : 1 + (unsigned)rndn(3), ctx, &lib) == 0) {
            pool_add(&P, FGH_LIBRARY, lib);
            st_libraries++;
            static const char *ks[] = {"fg_vadd", "fg_fill_u32"};
            for (int k = 0; k < 2; k++) {
                uint32_t np;
                if (get_entry(&s, FG_OP_cuLibraryGetKernel, lib, ks[k], ctx, &kern, &np) == 0) {
                    pool_add(&P, FGH_KERNEL, kern);
                    st_kernels++;
                }
            }
            buf a = {0};
            put64(&a, kern);
            if (kern && one_sync(&s, FG_OP_cuKernelGetFunction, &a, ctx, (uint8_t *)&kfn, 8) == 0) {
                pool_add(&P, FGH_FUNCTION, kfn);
                st_functions++;
            }
            free(a.b);
        }
    }
    cb_peer peer;
    int with_peer =
        chance(40) && cb_peer_start(&peer, s.sr.S, chance(25) ? 1 + (int)rndn(3) : 0, 1 + (unsigned)rndn(3)) == 0;
    if (with_peer) st_cb_sessions++;
    if (with_peer && ctx && chance(70)) callback_check(&s, &P, ctx, &peer);
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
            int certain_bad = 0, expect = EXP_ANY;
            if (ctx && chance(70)) {
                buf c = {0};
                put64(&c, chance(90) ? ctx : pick_handle(&P, FGH_CONTEXT));
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
                    static const unsigned fav[] = {
                        FG_OP_cuMemAlloc_v2, FG_OP_cuModuleLoadData, FG_OP_cuModuleLoadDataEx, FG_OP_cuLibraryLoadData,
                        FG_OP_cuModuleGetFunction, FG_OP_cuLibraryGetKernel, FG_OP_cuKernelGetFunction,
                        FG_OP_cuStreamCreate, FG_OP_cuEventCreate, FG_OP_cuMemcpyDtoH_v2, FG_OP_cuModuleGetGlobal_v2,
                        FG_OP_cuLibraryGetGlobal, FG_OP_cuMemcpyHtoD_v2, FG_OP_cuOccupancyMaxActiveClusters,
                        FG_OP_cuOccupancyMaxPotentialClusterSize, FG_OP_cuStreamGetCaptureInfo_v3, FG_OP_cuGraphCreate,
                        FG_OP_cuStreamDestroy_v2, FG_OP_cuEventDestroy_v2, FG_OP_cuModuleUnload, FG_OP_cuLibraryUnload};
                    op = fav[rndn(sizeof fav / sizeof *fav)];
                }
                if (!want && !is_last && chance(3)) op = sync_ops[rndn(n_sync)];
                if (!is_last && chance(8)) op = chance(50) ? FG_OP_cuLaunchKernelEx : FG_OP_IMAGE_CHUNK;
                if (chance(2)) { /* misplaced synchronous record */
                    op = sync_ops[rndn(n_sync)];
                    if (!(want && is_last)) certain_bad = 1;
                }
                buf a = {0}, pre = {0};
                int ex = EXP_ANY;
                certain_bad |= build_args(&P, op, &a, &pre, &ex);
                if (op == FG_OP_cuMemAlloc_v2 && a.n >= 8) memcpy(&alloc_size, a.b, 8);
                if (chance(3) && a.n) { /* cut the arguments short */
                    a.n = rndn(a.n); /* CLOSE or an error result, as above */
                    ex = EXP_ANY;
                }
                put(&pl, pre.b, pre.n); /* uploads go right before their load */
                add_record(&pl, op, &a);
                st_records++;
                free(a.b);
                free(pre.b);
                last_op = op;
                if (is_last) expect = ex;
            }
            s.seq++;
            send_frame(&s, FG_T_BATCH, want ? FG_F_WANT_REPLY : 0, &pl, s.seq);
            if (want) await_reply(&s, &P, last_op, alloc_size, certain_bad, expect);
            else if (certain_bad) expect_close(&s, "async batch with a malformed record");
            if (certain_bad) expect_rc = -1;
            if (s.closed) expect_rc = -1;
        } else if (kind < 92) { /* PING */
            add_record(&pl, FG_OP_PING, &(buf){0});
            s.seq++;
            send_frame(&s, FG_T_BATCH, FG_F_WANT_REPLY, &pl, s.seq);
            await_reply(&s, &P, FG_OP_PING, 0, 0, EXP_ANY);
            if (s.closed) expect_rc = -1;
        } else { /* a frame that is certainly a protocol error */
            const char *what = "?";
            uint8_t hb[FG_HEADER_SIZE];
            fg_header h = {FG_MAGIC, FG_T_BATCH, 0, 0, ++s.seq};
            buf raw = {0};
            switch (rndn(11)) {
            case 0: what = "bad magic"; h.magic ^= 1u << rndn(32); break;
            case 1: /* a frame type only the server sends (OUTPUT included), or a handshake one */
                what = "non-BATCH type";
                h.type = (uint16_t)(1 + rndn(FG_T_OUTPUT));
                if (h.type == FG_T_BATCH) h.type = FG_T_OUTPUT;
                break;
            case 2: what = "unknown type"; h.type = (uint16_t)(FG_T_OUTPUT + 1 + rndn(1000)); break;
            case 3: what = "unknown flags"; h.flags = (uint16_t)(2 + rndn(0xfffe)); break;
            case 4: what = "oversized"; h.length = FG_DEFAULT_MAX_FRAME + 1 + (uint32_t)rndn(1000); break;
            case 5: { /* unknown op (4..15: between IMAGE_CHUNK and the first driver call) */
                what = "unknown op";
                static const uint16_t bad_ops[] = {0, 4, 15, FG_OP_LIMIT, 200, 0xffff};
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
        await_reply(&s, &none, FG_OP_PING, 0, 0, EXP_ANY);
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
    if (with_peer) {
        cb_peer_join(&peer);
        st_cb_runs += peer.runs;
        st_cb_copies += peer.copies;
    }
    if (expect_rc != -2 && rc != expect_rc)
        fail("fgs_serve returned %d, want %d (reason: %s)", rc, expect_rc, s.sr.reason);
}

/* The module cache directory of this run: created empty, removed at the end. */
static void cache_create(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(cache_path, sizeof cache_path, "%s/fargpu-fuzz-cache.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(cache_path)) {
        perror("mkdtemp");
        exit(2);
    }
}

static void cache_remove(void) {
    DIR *d = opendir(cache_path);
    unsigned n = 0;
    if (d) {
        struct dirent *e;
        char path[sizeof cache_path + 300];
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(path, sizeof path, "%s/%s", cache_path, e->d_name);
            if (unlink(path) == 0) n++;
        }
        closedir(d);
    }
    if (rmdir(cache_path)) fail("could not remove the module cache %s: %s", cache_path, strerror(errno));
    printf("module cache: %u images written\n", n);
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
    fg_sha256(ptx, sizeof ptx, ptx_sha);
    cache_create();
    set_cache(1);
    char err[512];
    fgs_session *probe = fgs_open(g_sim, 0, 0, err, sizeof err);
    if (!probe) {
        printf("FAIL: fgs_open(%s): %s\n", g_sim, err);
        cache_remove();
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
    cache_remove();
    printf("fuzz_server: %u sessions, %lu frames, %lu records, %lu replies (%lu successful), %lu CLOSEs, %lu control "
           "closes, %lu deferred errors, %lu OUTPUT frames; images: %lu chunks, %lu NEED_IMAGE, %lu wrong hashes "
           "refused; deep paths: %lu allocs, %lu modules, %lu functions, %lu libraries, %lu kernels\n",
           sessions, st_frames, st_records, st_replies, st_ok_results, st_closes, st_ctl, st_deferred, st_outputs,
           st_chunks, st_need_image, st_refused_images, st_allocs, st_modules, st_functions, st_libraries, st_kernels);
    if (st_allocs == 0 || st_modules == 0 || st_functions == 0 || st_libraries == 0 || st_kernels == 0)
        fail("the fuzzer never reached allocations / modules / functions / libraries / kernels: the argument layouts "
             "are stale");
    if (sessions >= 100 && (st_need_image == 0 || st_refused_images == 0))
        fail("no load answered NEED_IMAGE or refused a wrong hash: the image records are stale");
    printf("fuzz_server: callback connections in %lu sessions: %lu RUN messages carrying %lu async copies\n",
           st_cb_sessions, st_cb_runs, st_cb_copies);
    if (sessions >= 100 && st_cb_copies == 0) fail("no RUN message carried an async device-to-host copy");
    (void)st_launch_ok;
    printf("fuzz_server: %d failures\n", failures);
    return failures ? 1 : 0;
}
