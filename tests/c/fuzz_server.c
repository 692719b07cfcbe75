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
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
    st_pageouts, st_kernels, st_launch_ok, st_frames, st_records, st_ctl, st_deferred, st_chunks, st_need_image,
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
    int status_fd; /* where the session's paging status lines go (0: none) */
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
        /* paging (paging.c): a 64 MiB host pool; status lines go nowhere */
        int pool = memfd_create("fuzz-pool", MFD_CLOEXEC), devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (pool < 0 || devnull < 0 || ftruncate(pool, 64 << 20)) exit(2);
        if (fgs_set_pager(s->sr.S, devnull, pool, -1, 0)) fail("fgs_set_pager refused a valid setup");
        s->status_fd = devnull;
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
    if (s->status_fd > 0) close(s->status_fd);
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
 * D a graph node id, l u64 n + n graph node ids (dependencies), e u8 edge-data flag (mostly 0),
 * A a CUmemAllocationProp, Z a CUmemPoolProps, T a CUmemLocation, c u64 n + n CUmemAccessDesc, m a CUDA_MEMSET_NODE_PARAMS,
 * y a CUDA_MEMCPY3D (device pointers, mostly), Q an array id, R an array descriptor (2D or 3D, both fit),
 * 3 a 3D copy as arrays.c takes it (host flags, CUDA_MEMCPY3D, stream, packed bytes), U a CUDA_RESOURCE_DESC,
 * t a CUDA_TEXTURE_DESC, W a mipmapped array id, I a 64-byte CUDA IPC token, d a user object id, J JIT options,
 * j a link state id, o a cubin offset, k a link input (an image reference with the link's arguments), n a tensor
 * map record, u a batch of stream memory operations, g u32 n + n atomic operations,
 * v a CUkernelNodeAttrValue (random, an event id at times),
 * H an image reference (sha256[32], u64 size, u32 extra_len, extra) after IMAGE_CHUNK records that may
 * upload it, Y one IMAGE_CHUNK record (sha256[32], u64 total, u64 offset, u32 len, bytes). */
static const char *layout[FG_OP_LIMIT] = {
    [FG_OP_SET_CTX] = "C",
    [FG_OP_PING] = "",
    [FG_OP_IMAGE_CHUNK] = "Y",
    /* Shared-memory records without a region (this client offers none): every one is CUDA_ERROR_INVALID_VALUE.
     * Bulk records are not fuzzed here (their raw bytes follow the frame; tests/python/test_transports.py). */
    [FG_OP_SHM_HTOD] = "pSqqiq",
    [FG_OP_SHM_DTOH] = "qpSqiq",
    [FG_OP_SHM_DEVPTR] = "q",
    [FG_OP_BULK_HTOD] = "-",
    [FG_OP_BULK_DTOH] = "-",
    [FG_OP_cuCtxCreate_v4] = "ii",
    [FG_OP_cuCtxDestroy_v2] = "C",
    [FG_OP_cuCtxDisablePeerAccess] = "C",
    [FG_OP_cuCtxEnablePeerAccess] = "Ci",
    [FG_OP_cuMemcpyPeer] = "pCpCq",
    [FG_OP_cuMemcpyPeerAsync] = "pCpCqS",
    [FG_OP_cuIpcGetMemHandle] = "p",
    [FG_OP_cuIpcOpenMemHandle_v2] = "Ii",
    [FG_OP_cuIpcCloseMemHandle] = "p",
    [FG_OP_cuIpcGetEventHandle] = "E",
    [FG_OP_cuIpcOpenEventHandle] = "I",
    [FG_OP_cuMemExportToShareableHandle] = "qiq",
    [FG_OP_cuMemImportFromShareableHandle] = "Ii",
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
    [FG_OP_cuDeviceGetDefaultMemPool] = "i",
    [FG_OP_cuDeviceGetMemPool] = "i",
    [FG_OP_cuDeviceGetName] = "ii",
    [FG_OP_cuDeviceGetP2PAttribute] = "wiii",
    [FG_OP_cuDeviceGetP2PAtomicCapabilities] = "gii",
    [FG_OP_cuDeviceGetLuid] = "i",
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
    [FG_OP_cuGraphInstantiateWithFlags] = "Gq",
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
    [FG_OP_cuMemAllocAsync] = "aS",
    [FG_OP_cuMemAllocFromPoolAsync] = "aOS",
    [FG_OP_cuMemFreeAsync] = "pS",
    [FG_OP_cuMemPoolCreate] = "Z",
    [FG_OP_cuMemPoolDestroy] = "O",
    [FG_OP_cuMemPoolSetAttribute] = "Oiq",
    [FG_OP_cuMemPoolGetAttribute] = "Oi",
    [FG_OP_cuMemPoolSetAccess] = "Oc",
    [FG_OP_cuMemPoolGetAccess] = "OT",
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
    [FG_OP_cuLibraryEnumerateKernels] = "Li",  /* u64 library, u32 capacity (server/replay/module.c) */
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
    [FG_OP_cuStreamUpdateCaptureDependencies_v2] = "Slei",
    [FG_OP_cuStreamBeginCaptureToGraph] = "SGlei",
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
    /* client VMM, profiler (server/replay/vmm.c, profiler.c) */
    [FG_OP_cuMemGetAllocationGranularity] = "wAi",
    [FG_OP_cuMemGetAccess] = "wTp",
    [FG_OP_cuMemAddressReserve] = "aqqq",
    [FG_OP_cuMemAddressFree] = "pq",
    [FG_OP_cuMemCreate] = "aqA",
    [FG_OP_cuMemRelease] = "q",
    [FG_OP_cuMemMap] = "pqqqq",
    [FG_OP_cuMemUnmap] = "pq",
    [FG_OP_cuMemSetAccess] = "pqc",
    [FG_OP_cuMemRetainAllocationHandle] = "p",
    [FG_OP_cuMemGetAllocationPropertiesFromHandle] = "q",
    [FG_OP_cuProfilerStart] = "",
    [FG_OP_cuProfilerStop] = "",
    /* graphs built by hand (server/replay/graph_build.c) */
    [FG_OP_cuGraphAddEmptyNode] = "Gl",
    [FG_OP_cuGraphAddKernelNode_v2] = "GlFKP",
    [FG_OP_cuGraphKernelNodeSetParams_v2] = "DFKP",
    [FG_OP_cuGraphExecKernelNodeSetParams_v2] = "XDFKP",
    [FG_OP_cuGraphAddMemsetNode] = "GlmC",
    [FG_OP_cuGraphAddMemcpyNode] = "GlyC",
    [FG_OP_cuGraphMemcpyNodeSetParams] = "Dy",
    [FG_OP_cuGraphExecMemcpyNodeSetParams] = "XDyC",
    [FG_OP_cuGraphAddEventRecordNode] = "GlE",
    [FG_OP_cuGraphAddEventWaitNode] = "GlE",
    [FG_OP_cuGraphAddChildGraphNode] = "GlG",
    [FG_OP_cuGraphAddHostNode] = "Glq",
    [FG_OP_cuGraphHostNodeSetParams] = "Dq",
    [FG_OP_cuGraphExecHostNodeSetParams] = "XDq",
    [FG_OP_cuGraphAddDependencies_v2] = "Glle",
    [FG_OP_cuGraphRemoveDependencies_v2] = "Glle",
    [FG_OP_cuGraphInstantiateWithParams] = "GqS",
    [FG_OP_cuGraphExecUpdate_v2] = "XG",
    [FG_OP_cuGraphClone] = "G",
    [FG_OP_cuGraphNodeGetType] = "D",
    [FG_OP_cuGraphGetRootNodes] = "Gr",
    [FG_OP_cuGraphGetEdges_v2] = "Grb",
    [FG_OP_cuGraphNodeGetDependencies_v2] = "Drb",
    [FG_OP_cuGraphNodeGetDependentNodes_v2] = "Drb",
    [FG_OP_cuGraphKernelNodeGetParams_v2] = "D",
    [FG_OP_cuGraphMemcpyNodeGetParams] = "D",
    [FG_OP_cuGraphHostNodeGetParams] = "D",
    [FG_OP_cuGraphChildGraphNodeGetGraph] = "D",
    [FG_OP_cuGraphConditionalHandleCreate] = "GCii",
    [FG_OP_cuGraphKernelNodeGetAttribute] = "Di",
    [FG_OP_cuGraphKernelNodeSetAttribute] = "Div",
    [FG_OP_cuGraphKernelNodeCopyAttributes] = "DD",
    [FG_OP_cuGraphAddNode_v2] = "GlqiiC",
    [FG_OP_cuGraphNodeFindInClone] = "wDG",
    [FG_OP_cuGraphDestroyNode] = "D",
    [FG_OP_cuGraphEventRecordNodeSetEvent] = "DE",
    [FG_OP_cuGraphEventWaitNodeSetEvent] = "DE",
    [FG_OP_cuGraphExecEventRecordNodeSetEvent] = "XDE",
    [FG_OP_cuGraphExecEventWaitNodeSetEvent] = "XDE",
    [FG_OP_cuGraphNodeSetEnabled] = "XDi",
    [FG_OP_cuGraphNodeGetEnabled] = "XDw",
    [FG_OP_cuGraphExecChildGraphNodeSetParams] = "XDG",
    [FG_OP_cuGraphMemsetNodeGetParams] = "Dw",
    [FG_OP_cuGraphMemsetNodeSetParams] = "Dm",
    [FG_OP_cuGraphExecMemsetNodeSetParams] = "XDmC",
    [FG_OP_cuGraphExecGetFlags] = "Xw",
    [FG_OP_cuGraphEventRecordNodeGetEvent] = "D",
    [FG_OP_cuGraphEventWaitNodeGetEvent] = "D",
    /* arrays, 3D copies, textures, surfaces (server/replay/arrays.c) */
    [FG_OP_cuArrayCreate_v2] = "R",
    [FG_OP_cuArray3DCreate_v2] = "R",
    [FG_OP_cuArrayDestroy] = "Q",
    [FG_OP_cuArrayGetDescriptor_v2] = "wQ",
    [FG_OP_cuArray3DGetDescriptor_v2] = "wQ",
    [FG_OP_cuMemcpy3D_v2] = "3",
    [FG_OP_cuMemcpy3DAsync_v2] = "3",
    [FG_OP_cuTexObjectCreate] = "Ute",
    [FG_OP_cuTexObjectDestroy] = "q",
    [FG_OP_cuSurfObjectCreate] = "U",
    [FG_OP_cuSurfObjectDestroy] = "q",
    [FG_OP_cuArrayGetPlane] = "Qi",
    [FG_OP_cuArrayGetMemoryRequirements] = "wQi",
    [FG_OP_cuTexObjectGetResourceDesc] = "q",
    [FG_OP_cuSurfObjectGetResourceDesc] = "q",
    [FG_OP_cuTexObjectGetTextureDesc] = "wq",
    [FG_OP_cuTexObjectGetResourceViewDesc] = "wq",
    [FG_OP_cuMipmappedArrayCreate] = "Ri",
    [FG_OP_cuMipmappedArrayGetLevel] = "Wi",
    [FG_OP_cuMipmappedArrayDestroy] = "W",
    /* JIT linking (server/replay/link.c) */
    [FG_OP_cuLinkCreate_v2] = "J",
    [FG_OP_cuLinkAddData_v2] = "k",
    [FG_OP_cuLinkComplete] = "jo",
    [FG_OP_cuLinkDestroy] = "j",
    /* tensor maps (server/replay/tensormap.c) */
    [FG_OP_cuTensorMapEncodeTiled] = "n",
    [FG_OP_cuTensorMapEncodeIm2col] = "n",
    [FG_OP_cuTensorMapEncodeIm2colWide] = "n",
    [FG_OP_cuTensorMapReplaceAddress] = "n",
    /* stream memory operations, context events (server/replay/memops.c, generic) */
    [FG_OP_cuStreamBatchMemOp_v2] = "Su",
    [FG_OP_cuCtxRecordEvent] = "CE",
    [FG_OP_cuCtxWaitEvent] = "CE",
    [FG_OP_cuGraphAddBatchMemOpNode] = "GlCu",
    [FG_OP_cuGraphBatchMemOpNodeGetParams] = "D",
    [FG_OP_cuGraphBatchMemOpNodeSetParams] = "DCu",
    [FG_OP_cuGraphExecBatchMemOpNodeSetParams] = "XDCu",
    /* user objects (server/replay/userobj.c, generic): a cookie, references, flags */
    [FG_OP_cuUserObjectCreate] = "qii",
    [FG_OP_cuUserObjectRetain] = "di",
    [FG_OP_cuUserObjectRelease] = "di",
    [FG_OP_cuGraphRetainUserObject] = "Gdii",
    [FG_OP_cuGraphReleaseUserObject] = "Gdi",
};

#include "fuzz_images.h" /* module images, uploads and loads */
#include "fuzz_args.h"   /* live handles and random arguments for every op */

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
        case FG_OP_cuArrayCreate_v2:
        case FG_OP_cuArray3DCreate_v2:
        case FG_OP_cuMipmappedArrayGetLevel: pool_add(P, FGH_ARRAY, v); break;
        case FG_OP_cuMipmappedArrayCreate: pool_add(P, FGH_MIPMAPPEDARRAY, v); break;
        case FG_OP_cuUserObjectCreate: pool_add(P, FGH_USEROBJECT, v); break;
        case FG_OP_cuGraphClone:
        case FG_OP_cuGraphChildGraphNodeGetGraph: pool_add(P, FGH_GRAPH, v); break;
        case FG_OP_cuLinkCreate_v2: /* u32 result, u64 link, outputs */
            if (out_len >= 12) {
                uint32_t res;
                memcpy(&res, p + 24, 4);
                memcpy(&v, p + 28, 8);
                if (!res) pool_add(P, FGH_LINKSTATE, v);
            }
            break;
        case FG_OP_cuGraphInstantiateWithParams: /* u32 result, u64 exec, ... */
            if (out_len >= 12) {
                uint32_t res;
                memcpy(&res, p + 24, 4);
                memcpy(&v, p + 28, 8);
                if (!res) pool_add(P, FGH_GRAPHEXEC, v);
            }
            break;
        case FG_OP_cuGraphAddEmptyNode:
        case FG_OP_cuGraphAddKernelNode_v2:
        case FG_OP_cuGraphAddMemsetNode:
        case FG_OP_cuGraphAddMemcpyNode:
        case FG_OP_cuGraphAddEventRecordNode:
        case FG_OP_cuGraphAddEventWaitNode:
        case FG_OP_cuGraphAddChildGraphNode:
        case FG_OP_cuGraphAddHostNode:
        case FG_OP_cuGraphAddNode_v2:
        case FG_OP_cuGraphAddBatchMemOpNode:
        case FG_OP_cuGraphNodeFindInClone: pool_add(P, FGH_GRAPHNODE, v); break;
        case FG_OP_cuDeviceGetDefaultMemPool:
        case FG_OP_cuDeviceGetMemPool:
        case FG_OP_cuMemPoolCreate: pool_add(P, FGH_MEMORYPOOL, v); break;
        case FG_OP_cuStreamGetCaptureInfo_v3: /* u32 status, u32 n, u64 id, u64 graph, n nodes */
            if (out_len >= 24) {
                memcpy(&v, p + 24 + 16, 8);
                pool_add(P, FGH_GRAPH, v);
            }
            break;
        case FG_OP_cuMemAlloc_v2:
        case FG_OP_cuMemAllocAsync:
        case FG_OP_cuMemAllocFromPoolAsync:
        case FG_OP_cuModuleGetGlobal_v2:
        case FG_OP_cuLibraryGetGlobal:
            if (out_len >= 8 && v) {
                uint64_t sz = alloc_size;
                if (last_op != FG_OP_cuMemAlloc_v2 && last_op != FG_OP_cuMemAllocAsync &&
                    last_op != FG_OP_cuMemAllocFromPoolAsync && out_len >= 16) memcpy(&sz, p + 32, 8);
                int i = P->nptr < POOL ? P->nptr++ : (int)rndn(POOL);
                P->ptr[i] = v;
                P->size[i] = sz;
                if (last_op == FG_OP_cuMemAlloc_v2) st_allocs++;
            }
            if ((last_op == FG_OP_cuMemAllocAsync || last_op == FG_OP_cuMemAllocFromPoolAsync) && out_len >= 32) {
                uint64_t node = 0, graph = 0; /* under capture: the allocation's node and the capture's graph */
                memcpy(&node, p + 24 + 8, 8);
                memcpy(&graph, p + 24 + 16, 8);
                if (node) pool_add(P, FGH_GRAPHNODE, node);
                if (graph) pool_add(P, FGH_GRAPH, graph);
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

#include "fuzz_scripted.h" /* scripted steps: kernel check, leak check */
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
            if (use_ctl && chance(70)) { /* page the session out; the next frame pages it back in */
                char line[160];
                if (chance(50)) snprintf(line, sizeof line, "pageout host 0 %u\n", 64u << 20);
                else snprintf(line, sizeof line, "pageout disk /tmp/fargpu-fuzz-spill-%d-%u\n", (int)getpid(), idx);
                if (write(s.ctl_w, line, strlen(line)) < 0) exit(2);
                st_pageouts++;
            }
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
                        FG_OP_cuMemAlloc_v2, FG_OP_cuMemAllocAsync, FG_OP_cuMemPoolCreate, FG_OP_cuModuleLoadData,
                        FG_OP_cuModuleLoadDataEx, FG_OP_cuLibraryLoadData,
                        FG_OP_cuModuleGetFunction, FG_OP_cuLibraryGetKernel, FG_OP_cuKernelGetFunction,
                        FG_OP_cuStreamCreate, FG_OP_cuEventCreate, FG_OP_cuMemcpyDtoH_v2, FG_OP_cuModuleGetGlobal_v2,
                        FG_OP_cuLibraryGetGlobal, FG_OP_cuMemcpyHtoD_v2, FG_OP_cuOccupancyMaxActiveClusters,
                        FG_OP_cuOccupancyMaxPotentialClusterSize, FG_OP_cuStreamGetCaptureInfo_v3, FG_OP_cuGraphCreate,
                        FG_OP_cuStreamDestroy_v2, FG_OP_cuEventDestroy_v2, FG_OP_cuModuleUnload, FG_OP_cuLibraryUnload,
                        FG_OP_cuLinkCreate_v2, FG_OP_cuLinkAddData_v2, FG_OP_cuLinkComplete};
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
                if ((op == FG_OP_cuMemAlloc_v2 || op == FG_OP_cuMemAllocAsync || op == FG_OP_cuMemAllocFromPoolAsync) &&
                    a.n >= 8)
                    memcpy(&alloc_size, a.b, 8);
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
                if (h.type == FG_T_BATCH || h.type == FG_T_CLOSE) /* (a client's CLOSE ends its session: SPEC) */
                    h.type = FG_T_OUTPUT;
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
        /* control lines (paging.c): unknown ones and a page-in of a resident session change nothing */
        const char why[] = "bogus line\npagein\nclose lease expired (fuzz)\n";
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
    /* This harness plays the node agent, which owns spill files: a page-in leaves its file for the agent to
     * delete (spill.c), and a session that ends paged leaves it too. */
    char spill[96];
    snprintf(spill, sizeof spill, "/tmp/fargpu-fuzz-spill-%d-%u", (int)getpid(), idx);
    unlink(spill);
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
        if (layout[op] && !strcmp(layout[op], "-")) continue; /* not fuzzed as records */
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
    printf("fuzz_server: %lu page-outs asked for\n", st_pageouts);
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
