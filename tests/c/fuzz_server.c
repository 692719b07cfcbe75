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
 * others).
 * One translation unit: this file (the driver: randomness, statistics, the fuzz session, main) includes
 * fuzz_layouts.h (argument layouts), fuzz_images.h, fuzz_args.h (arguments), fuzz_session.h (the session under
 * test, frames and answers), fuzz_scripted.h (kernel and leak checks, green-context state) and
 * fuzz_callback_peer.h. */
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
    st_refused_images, st_outputs, st_cb_sessions, st_cb_runs, st_cb_copies, st_bulk_later, st_greens;

/* ---------------------------------------------------------------- settings of this run ---- */

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

#include "fuzz_layouts.h" /* the argument layout of every op */

#include "fuzz_images.h" /* module images, uploads and loads */
#include "fuzz_args.h"   /* live handles and random arguments for every op */

static unsigned sync_ops[FG_OP_LIMIT], async_ops[FG_OP_LIMIT];
static unsigned n_sync, n_async;

#include "fuzz_session.h" /* a session under test: serving thread, frames, answers checked */
#include "fuzz_scripted.h" /* scripted steps: kernel check, leak check */
#include "fuzz_callback_peer.h" /* the callback connection's client end, and callback_check */

/* ---------------------------------------------------------------- the fuzz session ---- */

static void fuzz_session(unsigned idx) {
    cur_session = idx;
    ptx_uploaded = 0;
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
    if (ctx && chance(20)) green_prime(&s, &P, ctx);
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
            fprintf(stderr, "op %u (%s) has no argument layout in fuzz_layouts.h\n", op, fg_op_name(op));
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
    later_bulk_check();
    for (unsigned i = 1; i <= sessions && failures < 20; i++) fuzz_session(i);
    cur_session = 0;
    uint64_t after = probe_free();
    uint64_t direct = sim_free_direct();
    if (after != baseline || direct != baseline)
        fail("leak across the fuzz sessions: free %" PRIu64 " (sim: %" PRIu64 "), baseline %" PRIu64, after, direct,
             baseline);
    cache_remove();
    printf("fuzz_server: %lu page-outs asked for, %lu green contexts created\n", st_pageouts, st_greens);
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
    printf("fuzz_server: %lu async device-to-host copies delivered over the bulk path in the random sessions\n",
           st_bulk_later);
    if (sessions >= 100 && st_cb_copies == 0) fail("no RUN message carried an async device-to-host copy");
    (void)st_launch_ok;
    printf("fuzz_server: %d failures\n", failures);
    return failures ? 1 : 0;
}
