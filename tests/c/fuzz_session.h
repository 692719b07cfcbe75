/* fuzz_session.h — a session under test, for fuzz_server.c (included there, after fuzz_args.h): fgs_serve on a
 * thread of its own, serving one end of a socketpair (and a control pipe with a paging pool, sometimes); the
 * client end writes frames and reads the server's, and await_reply / expect_close check each answer (a REPLY of
 * the right seq and length, or a CLOSE) and harvest live handles from replies. */

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
    uint64_t pos = 24 + out_len, prev_id = 0, after = 0; /* after: bytes of bulk-delivered copies after the frame */
    for (uint32_t i = 0; i < n_later && pos <= h.length; i++) { /* u64 id, u64 length, bytes; ids increasing */
        uint64_t id, n;
        if (pos + 16 > h.length) { pos = UINT64_MAX; break; }
        memcpy(&id, p + pos, 8);
        memcpy(&n, p + pos + 8, 8);
        if (i && id <= prev_id) fail("REPLY copy ids not increasing: %" PRIu64 " after %" PRIu64, id, prev_id);
        prev_id = id;
        if (n & FG_LATER_BULK) { /* over the bulk path: one connection here (the fuzzer opens no data connection) */
            uint64_t len = n & FG_LATER_LEN_MASK;
            if (n >> FG_LATER_C_SHIFT != 0x81 || len < FG_LATER_BULK_MIN || len > FG_CHUNK)
                fail("REPLY names a bulk-delivered copy of %#" PRIx64, n);
            after += len;
            pos += 16;
            st_bulk_later++;
            continue;
        }
        if (n > FG_CHUNK) { pos = UINT64_MAX; break; }
        pos += 16 + n;
    }
    if (pos != h.length) fail("REPLY lengths do not add up: %" PRIu64 " vs %u (n_later %u)", pos, h.length, n_later);
    for (uint8_t sink[65536]; after;) { /* their pieces follow the frame on the session's connection */
        size_t k = after < sizeof sink ? (size_t)after : sizeof sink;
        if (read_full_to(s->fd, sink, k)) break;
        after -= k;
    }
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
        case FG_OP_cuCtxFromGreenCtx: pool_add(P, FGH_CONTEXT, v); break;
        case FG_OP_cuGreenCtxStreamCreate: pool_add(P, FGH_STREAM, v); break;
        case FG_OP_cuGreenCtxCreate:
            if (v) st_greens++;
            pool_add(P, FGH_GREENCTX, v);
            break;
        case FG_OP_cuStreamGetGreenCtx: pool_add(P, FGH_GREENCTX, v); break;
        case FG_OP_cuDevResourceGenerateDesc: pool_add(P, FGH_DEVRESOURCEDESC, v); break;
        case FG_OP_cuDeviceGetDevResource:
        case FG_OP_cuCtxGetDevResource:
        case FG_OP_cuGreenCtxGetDevResource:
            if (out_len >= sizeof(CUdevResource))
                memcpy(&P->res[P->nres < 8 ? P->nres++ : (int)rndn(8)], p + 24, sizeof(CUdevResource));
            break;
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
