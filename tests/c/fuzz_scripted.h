/* fuzz_scripted.h — the scripted client steps of fuzz_server.c (included there, after the frame helpers): one
 * synchronous call with its answer, the primary context, free memory (through the server and from the sim
 * directly), module loads by upload and by name, the kernel check and leak check the header of fuzz_server.c
 * describes, and live green-context state for random sessions. */

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
    if (parts) {
        put_upload(&pre, ptx_sha, (const uint8_t *)ptx, sizeof ptx, parts);
        ptx_uploaded = 1; /* the session's own copy: later loads by name may find it even with the cache off */
    }
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

/* Async device→host copies of 256 KiB or more come after their reply over the bulk path (SPEC.md, "Replies"): three
 * copies (3 MiB + 5, 100 bytes, 300 KiB) on the legacy stream, then cuCtxSynchronize: the reply names the large ones
 * with FG_LATER_BULK and C = 1 and carries the small one inline; the large ones' bytes follow the frame, in id order,
 * and match what was written. Then the same again, but the client goes away after the REPLY frame, the pieces unread:
 * the server ends the session (fgs_serve returns), nothing hangs. */
static void later_bulk_check(void) {
    enum { N = 4u << 20 };
    static const uint64_t want[3] = {(3u << 20) + 5, 100, 300u << 10};
    for (int leave = 0; leave < 2; leave++) {
        session s;
        if (session_start(&s, 0, 0)) return;
        uint64_t ctx = retain_primary(&s), ptr = 0;
        buf a = {0}, b = {0};
        put64(&a, N);
        if (one_sync(&s, FG_OP_cuMemAlloc_v2, &a, ctx, (uint8_t *)&ptr, 8)) fail("later bulk: cuMemAlloc_v2");
        uint8_t *pat = malloc(N);
        for (uint32_t i = 0; i < N; i++) pat[i] = (uint8_t)(i * 7 + (i >> 11));
        a.n = 0;
        put64(&a, ptr);
        put64(&a, N);
        put(&a, pat, N);
        if (one_sync(&s, FG_OP_cuMemcpyHtoD_v2, &a, ctx, NULL, 0)) fail("later bulk: cuMemcpyHtoD_v2");
        for (int k = 0; k < 3; k++) {
            a.n = 0;
            put64(&a, ptr + (uint64_t)k * 1000);
            put64(&a, 0); /* the legacy stream */
            put64(&a, want[k]);
            add_record(&b, FG_OP_cuMemcpyDtoHAsync_v2, &a);
        }
        a.n = 0;
        add_record(&b, FG_OP_cuCtxSynchronize, &a);
        s.seq++;
        send_frame(&s, FG_T_BATCH, FG_F_WANT_REPLY, &b, s.seq);
        fg_header h;
        uint8_t *p = NULL;
        int t = read_answer(&s, &h, &p);
        uint32_t nl = 0;
        uint64_t hd[6] = {0};
        if (t == FG_T_REPLY && h.length == 24 + 3 * 16 + 100) {
            memcpy(&nl, p + 12, 4);
            memcpy(hd, p + 24, 32);
            memcpy(hd + 2, p + 24 + 32 + 100, 16); /* (the inline one's bytes between) */
            memcpy(hd + 4, p + 24 + 16, 16);
        }
        /* hd: id0 len0 | id2 len2 | id1 len1 */
        uint64_t c1 = FG_LATER_BULK | 1ull << FG_LATER_C_SHIFT;
        if (nl != 3 || hd[1] != (want[0] | c1) || hd[3] != (want[2] | c1) || hd[5] != want[1] ||
            memcmp(p + 24 + 32, pat + 1000, 100))
            fail("later bulk: reply of %u bytes, %u copies, lengths %#" PRIx64 " %#" PRIx64 " %#" PRIx64, h.length,
                 nl, hd[1], hd[5], hd[3]);
        free(p);
        if (!leave) {
            uint8_t *got = malloc(want[0] + want[2]);
            if (read_full_to(s.fd, got, want[0] + want[2]) || memcmp(got, pat, want[0]) ||
                memcmp(got + want[0], pat + 2000, want[2]))
                fail("later bulk: the bytes after the reply do not match what was written");
            free(got);
            if (mem_free_now(&s, ctx) == 0) fail("later bulk: no reply after the delivery");
        } else {
            shutdown(s.fd, SHUT_RDWR); /* gone before the pieces: the server's writes fail */
        }
        free(pat);
        free(a.b);
        free(b.b);
        int rc = session_end(&s);
        if (rc != 0) fail("later bulk: fgs_serve returned %d (%s)", rc, s.sr.reason);
    }
}

/* Live green-context state to aim at (the chain is too long for random records to build): the device's SM resource
 * (kept for random splits and descriptors), a descriptor of it, a green context, and at times its converted context
 * and a stream of it. The session usually ends with them alive, so fgs_close destroys them. */
static void green_prime(session *s, pools *P, uint64_t ctx) {
    buf a = {0};
    put32(&a, 0);                      /* device 0 */
    put8(&a, 1);                       /* want the resource */
    put32(&a, CU_DEV_RESOURCE_TYPE_SM);
    CUdevResource res;
    int r = one_sync(s, FG_OP_cuDeviceGetDevResource, &a, ctx, (uint8_t *)&res, sizeof res);
    free(a.b);
    if (r != 0) return;
    if (P->nres < 8) P->res[P->nres++] = res;
    buf d = {0};
    put8(&d, 1);
    put32(&d, 1);
    put8(&d, 1);
    put(&d, &res, sizeof res);
    uint64_t desc = 0;
    r = one_sync(s, FG_OP_cuDevResourceGenerateDesc, &d, ctx, (uint8_t *)&desc, 8);
    free(d.b);
    if (r != 0 || !desc) return;
    pool_add(P, FGH_DEVRESOURCEDESC, desc);
    buf g = {0};
    put64(&g, desc);
    put32(&g, 0);
    put32(&g, CU_GREEN_CTX_DEFAULT_STREAM);
    uint64_t green = 0;
    r = one_sync(s, FG_OP_cuGreenCtxCreate, &g, ctx, (uint8_t *)&green, 8);
    free(g.b);
    if (r != 0 || !green) return;
    st_greens++;
    pool_add(P, FGH_GREENCTX, green);
    if (chance(50)) {
        buf c = {0};
        put8(&c, 1);
        put64(&c, green);
        uint64_t conv = 0;
        if (one_sync(s, FG_OP_cuCtxFromGreenCtx, &c, ctx, (uint8_t *)&conv, 8) == 0) pool_add(P, FGH_CONTEXT, conv);
        free(c.b);
    }
    if (chance(50)) {
        buf c = {0};
        put8(&c, 1);
        put64(&c, green);
        put32(&c, CU_STREAM_NON_BLOCKING);
        put32(&c, 0);
        uint64_t st = 0;
        if (one_sync(s, FG_OP_cuGreenCtxStreamCreate, &c, ctx, (uint8_t *)&st, 8) == 0) pool_add(P, FGH_STREAM, st);
        free(c.b);
    }
}
