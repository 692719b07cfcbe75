/* fuzz_args.h — live state and random arguments for fuzz_server.c (included there, after fuzz_images.h): handles
 * harvested from replies, handles of the server's shape that are wrong in one way, device pointers in, at the edge
 * of and outside allocations, sizes, launch attributes, and the argument builder for every op. */

/* ---------------------------------------------------------------- live state and random arguments ---- */

/* Live things harvested from replies. */
#define POOL 32
typedef struct {
    uint64_t ids[FGH_LIMIT][POOL]; /* by handle kind (fg_handles.h) */
    int nids[FGH_LIMIT];
    uint64_t ptr[POOL], size[POOL];
    int nptr;
    CUdevResource res[8]; /* SM resources the node handed out (green contexts) */
    int nres;
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

/* An id of the server's shape (server/replay/handles.c make_id): a 16-byte-aligned user-space pointer with
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

/* JIT options as the stub sends them (server/replay/jit_options.c, for links and loads): "u32 n, n x (u32 option, u64 value)"; mostly a few
 * known options with log capacities and sizes from 0 to oversized, now and then an unknown option, one that names
 * client symbols, a duplicated log buffer or a count beyond the server's limit. */
static void put_jit_options(buf *a) {
    uint32_t n = chance(30) ? 0 : (uint32_t)rndn(9);
    if (chance(3)) n = 64 + (uint32_t)rndn(3);
    if (chance(1)) n = (uint32_t)rnd();
    put32(a, n);
    for (uint32_t i = 0; i < n && i < 80; i++) {
        uint32_t o = (uint32_t)rndn(CU_JIT_NUM_OPTIONS);
        if (chance(50)) o = (const uint32_t[]){2, 3, 4, 5, 6, 12}[rndn(6)]; /* wall time, logs, verbose */
        if (chance(3)) o = CU_JIT_NUM_OPTIONS + (uint32_t)rndn(100);
        uint64_t v = chance(70) ? rndn(8192) : chance(50) ? pick_size() : rnd();
        put32(a, o);
        put64(a, v);
    }
}

/* A tensor map record (server/replay/tensormap.c): mostly a plausible rank and parameters near the driver's
 * limits, device pointers from the pools, now and then a rank the arrays cannot have. */
static void put_tensor_map(pools *P, unsigned op, buf *a) {
    if (op == FG_OP_cuTensorMapReplaceAddress) {
        for (int i = 0; i < 16; i++) put64(a, chance(50) ? rnd() : 0);
        put64(a, chance(70) ? pick_ptr(P) : rnd());
        return;
    }
    uint32_t rank = chance(90) ? 1 + (uint32_t)rndn(5) : (uint32_t)rnd();
    put32(a, chance(85) ? (uint32_t)rndn(16) : (uint32_t)rnd());
    put32(a, rank);
    put64(a, chance(70) ? pick_ptr(P) & ~15ull : rnd());
    if (rank == 0 || rank > 5) return; /* the server reads no further */
    for (uint32_t i = 0; i < rank; i++) put64(a, chance(80) ? 1 + rndn(4096) : rnd());
    for (uint32_t i = 0; i + 1 < rank; i++) put64(a, chance(80) ? 16 * (1 + rndn(1024)) : rnd());
    uint32_t corners = op == FG_OP_cuTensorMapEncodeIm2col ? (rank > 2 ? rank - 2 : 0) : 0;
    if (op == FG_OP_cuTensorMapEncodeTiled)
        for (uint32_t i = 0; i < rank; i++) put32(a, chance(85) ? 1 + (uint32_t)rndn(256) : (uint32_t)rnd());
    for (uint32_t i = 0; i < 2 * corners; i++) put32(a, (uint32_t)(int32_t)(rndn(64) - 32));
    if (op == FG_OP_cuTensorMapEncodeIm2colWide) {
        put32(a, (uint32_t)(int32_t)(rndn(64) - 32));
        put32(a, (uint32_t)(int32_t)(rndn(64) - 32));
    }
    if (op != FG_OP_cuTensorMapEncodeTiled) {
        put32(a, chance(85) ? 1 + (uint32_t)rndn(256) : (uint32_t)rnd());
        put32(a, chance(85) ? 1 + (uint32_t)rndn(1024) : (uint32_t)rnd());
    }
    for (uint32_t i = 0; i < rank; i++) put32(a, chance(85) ? 1 + (uint32_t)rndn(8) : (uint32_t)rnd());
    put32(a, (uint32_t)rndn(4)); /* interleave */
    if (op == FG_OP_cuTensorMapEncodeIm2colWide) put32(a, (uint32_t)rndn(3));
    put32(a, (uint32_t)rndn(8));
    put32(a, (uint32_t)rndn(5));
    put32(a, (uint32_t)rndn(3));
}

/* cuStreamBatchMemOp_v2's "u32 count, u32 flags, count x CUstreamBatchMemOpParams" (server/replay/memops.c):
 * mostly a few writes and waits (met or not) on pool pointers, now and then unknown operations, wrong flags,
 * pointers outside the session or a count beyond the limit. */
/* A CUdevResource: mostly one the node handed out, else one of no type, or random bytes with the SM type. */
static void put_resource(pools *P, buf *a) {
    CUdevResource r;
    memset(&r, 0, sizeof r);
    if (P->nres && chance(75)) {
        r = P->res[rndn(P->nres)];
        if (chance(15)) r.sm.smCount = (unsigned)rnd();
    } else if (chance(50)) {
        for (size_t k = 0; k < sizeof r; k++) ((uint8_t *)&r)[k] = (uint8_t)rnd();
        r.type = CU_DEV_RESOURCE_TYPE_SM;
    }
    put(a, &r, sizeof r);
}

static void put_memops(pools *P, buf *a) {
    uint32_t n = chance(90) ? (uint32_t)rndn(6) : chance(50) ? 256 + (uint32_t)rndn(4) : (uint32_t)rnd();
    put32(a, n);
    put32(a, chance(95) ? 0 : (uint32_t)rnd());
    if (n > 300) return; /* the server reads no further */
    for (uint32_t i = 0; i < n; i++) {
        CUstreamBatchMemOpParams p;
        memset(&p, 0, sizeof p);
        static const CUstreamBatchMemOpType ops[] = {CU_STREAM_MEM_OP_WRITE_VALUE_32, CU_STREAM_MEM_OP_WRITE_VALUE_64,
                                                     CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES, CU_STREAM_MEM_OP_BARRIER,
                                                     CU_STREAM_MEM_OP_WAIT_VALUE_32, CU_STREAM_MEM_OP_WAIT_VALUE_64};
        p.operation = chance(95) ? ops[rndn(6)] : (CUstreamBatchMemOpType)rnd();
        p.waitValue.address = pick_ptr(P) & ~7ull;
        p.waitValue.value64 = chance(50) ? 0 : rnd();
        int wait = p.operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || p.operation == CU_STREAM_MEM_OP_WAIT_VALUE_64;
        p.waitValue.flags = chance(85) ? (wait ? CU_STREAM_WAIT_VALUE_GEQ : 0) : (unsigned)rnd();
        p.waitValue.alias = rnd();
        put(a, &p, sizeof p);
    }
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
        case 'D': put64(a, pick_handle(P, FGH_GRAPHNODE)); break;
        case 'Q': put64(a, pick_handle(P, FGH_ARRAY)); break;
        case 'W': put64(a, pick_handle(P, FGH_MIPMAPPEDARRAY)); break;
        case 'R': {
            CUDA_ARRAY3D_DESCRIPTOR d; /* the 2D descriptor is its prefix: an extra tail is a protocol error */
            memset(&d, 0, sizeof d);
            d.Width = chance(85) ? 1 + rndn(256) : pick_size();
            d.Height = chance(85) ? rndn(64) : pick_size();
            d.Depth = chance(85) ? rndn(8) : pick_size();
            d.Format = chance(85) ? CU_AD_FORMAT_FLOAT : (CUarray_format)pick_int();
            d.NumChannels = chance(85) ? 1u << rndn(3) : (unsigned)pick_int();
            d.Flags = chance(85) ? 0 : (unsigned)pick_int();
            if (op == FG_OP_cuMipmappedArrayCreate && chance(85)) { /* small levels of a square */
                d.Width = 1 + rndn(64);
                d.Height = d.Width;
                d.Depth = 0;
            }
            if (op == FG_OP_cuArrayCreate_v2) {
                CUDA_ARRAY_DESCRIPTOR d2 = {d.Width, d.Height, d.Format, d.NumChannels};
                put(a, &d2, sizeof d2);
            } else {
                put(a, &d, sizeof d);
            }
            break;
        }
        case '3': {
            uint8_t hs = chance(30), hd = !hs && chance(40);
            put8(a, hs);
            put8(a, hd);
            CUDA_MEMCPY3D c;
            memset(&c, 0, sizeof c);
            int k = (int)rndn(3);
            c.srcMemoryType = k == 0 ? CU_MEMORYTYPE_ARRAY : k == 1 ? CU_MEMORYTYPE_DEVICE : (CUmemorytype)pick_int();
            k = (int)rndn(3);
            c.dstMemoryType = k == 0 ? CU_MEMORYTYPE_ARRAY : k == 1 ? CU_MEMORYTYPE_DEVICE : (CUmemorytype)pick_int();
            c.srcArray = (CUarray)(uintptr_t)pick_handle(P, FGH_ARRAY);
            c.dstArray = (CUarray)(uintptr_t)pick_handle(P, FGH_ARRAY);
            c.srcDevice = pick_ptr(P);
            c.dstDevice = pick_ptr(P);
            c.WidthInBytes = chance(85) ? 1 + rndn(512) : pick_size();
            c.Height = chance(85) ? 1 + rndn(8) : pick_size();
            c.Depth = chance(85) ? 1 + rndn(2) : pick_size();
            c.srcXInBytes = chance(85) ? rndn(64) : pick_size();
            c.srcPitch = chance(70) ? 0 : pick_size();
            c.dstPitch = chance(70) ? 0 : pick_size();
            put(a, &c, sizeof c);
            put64(a, pick_handle(P, FGH_STREAM));
            if (hs) {
                uint64_t n = c.WidthInBytes * c.Height * c.Depth;
                if (c.WidthInBytes > 4096 || c.Height > 64 || c.Depth > 8 || chance(5)) { /* a wrong count */
                    put64(a, n + 1 + rndn(16));
                    return 1;
                }
                put64(a, n);
                for (uint64_t k2 = 0; k2 < n; k2++) put8(a, (uint8_t)rnd());
            }
            break;
        }
        case 'U': {
            CUDA_RESOURCE_DESC r;
            memset(&r, 0, sizeof r);
            r.resType = chance(85) ? (CUresourcetype)rndn(4) : (CUresourcetype)pick_int();
            if (r.resType == CU_RESOURCE_TYPE_ARRAY) r.res.array.hArray = (CUarray)(uintptr_t)pick_handle(P, FGH_ARRAY);
            else if (r.resType == CU_RESOURCE_TYPE_LINEAR) {
                r.res.linear.devPtr = pick_ptr(P);
                r.res.linear.format = CU_AD_FORMAT_FLOAT;
                r.res.linear.numChannels = 1;
                r.res.linear.sizeInBytes = chance(80) ? rndn(4096) : pick_size();
            } else {
                r.res.pitch2D.devPtr = pick_ptr(P);
                r.res.pitch2D.width = rndn(64);
                r.res.pitch2D.height = chance(80) ? rndn(64) : pick_size();
                r.res.pitch2D.pitchInBytes = chance(80) ? 512 : pick_size();
            }
            put(a, &r, sizeof r);
            break;
        }
        case 't': {
            CUDA_TEXTURE_DESC t;
            memset(&t, 0, sizeof t);
            t.filterMode = chance(85) ? CU_TR_FILTER_MODE_POINT : (CUfilter_mode)pick_int();
            put(a, &t, sizeof t);
            break;
        }
        case 'l': {
            uint64_t n = chance(90) ? rndn(4) : chance(50) ? rndn(5000) : pick_size();
            put64(a, n);
            for (uint64_t k = 0; k < n && k < 5000; k++) put64(a, pick_handle(P, FGH_GRAPHNODE));
            if (n > 5000) return 1; /* over the server's bound, or short: malformed */
            break;
        }
        case 'e': put8(a, chance(90) ? 0 : (uint8_t)rnd()); break;
        case 'A': {
            CUmemAllocationProp pr;
            memset(&pr, 0, sizeof pr);
            pr.type = chance(85) ? CU_MEM_ALLOCATION_TYPE_PINNED : (CUmemAllocationType)pick_int();
            pr.location.type = chance(85) ? CU_MEM_LOCATION_TYPE_DEVICE : (CUmemLocationType)pick_int();
            pr.location.id = chance(85) ? 0 : pick_int();
            pr.requestedHandleTypes = chance(85) ? CU_MEM_HANDLE_TYPE_NONE : (CUmemAllocationHandleType)pick_int();
            pr.allocFlags.compressionType = chance(90) ? 0 : (unsigned char)rnd();
            put(a, &pr, sizeof pr);
            break;
        }
        case 'Z': { /* CUmemPoolProps: mostly a device pool on device 0 (server/replay/mempool.c) */
            CUmemPoolProps pr;
            memset(&pr, 0, sizeof pr);
            pr.allocType = chance(85) ? CU_MEM_ALLOCATION_TYPE_PINNED : (CUmemAllocationType)pick_int();
            pr.location.type = chance(85) ? CU_MEM_LOCATION_TYPE_DEVICE : (CUmemLocationType)pick_int();
            pr.location.id = chance(85) ? 0 : pick_int();
            pr.handleTypes = chance(85) ? CU_MEM_HANDLE_TYPE_NONE : (CUmemAllocationHandleType)pick_int();
            pr.maxSize = chance(70) ? 0 : pick_size();
            pr.usage = chance(95) ? 0 : (unsigned short)rnd();
            if (chance(5)) pr.win32SecurityAttributes = (void *)(uintptr_t)rnd();
            put(a, &pr, sizeof pr);
            break;
        }
        case 'I': { /* a 64-byte IPC token (server/replay/ipc.c): mostly with a known magic, random id and rest */
            static const char *magic[] = {"FGIPCMEM", "FGIPCEVT", "FGIPCVMM"};
            uint8_t t[64];
            for (size_t k = 0; k < sizeof t; k++) t[k] = (uint8_t)rnd();
            if (chance(70)) memcpy(t, magic[rndn(3)], 8);
            put(a, t, sizeof t);
            break;
        }
        case 'T': {
            CUmemLocation loc = {chance(85) ? CU_MEM_LOCATION_TYPE_DEVICE : (CUmemLocationType)pick_int(),
                                 chance(85) ? 0 : pick_int()};
            put(a, &loc, sizeof loc);
            break;
        }
        case 'c': {
            uint64_t n = chance(90) ? rndn(3) : chance(50) ? 65 + rndn(100) : pick_size();
            put64(a, n);
            if (n > 64) return 1; /* over the server's bound: malformed */
            for (uint64_t k = 0; k < n; k++) {
                CUmemAccessDesc d;
                memset(&d, 0, sizeof d);
                d.location.type = chance(85) ? CU_MEM_LOCATION_TYPE_DEVICE : (CUmemLocationType)pick_int();
                d.location.id = chance(85) ? 0 : pick_int();
                d.flags = chance(85) ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : (CUmemAccess_flags)pick_int();
                put(a, &d, sizeof d);
            }
            break;
        }
        case 'm': {
            CUDA_MEMSET_NODE_PARAMS m;
            memset(&m, 0, sizeof m);
            m.dst = pick_ptr(P);
            m.pitch = chance(80) ? 0 : pick_size();
            m.value = (unsigned)rnd();
            m.elementSize = chance(85) ? (unsigned)(1u << rndn(3)) : (unsigned)pick_int();
            m.width = chance(85) ? rndn(4096) : pick_size();
            m.height = chance(85) ? 1 + rndn(4) : pick_size();
            put(a, &m, sizeof m);
            break;
        }
        case 'y': {
            CUDA_MEMCPY3D c;
            memset(&c, 0, sizeof c);
            c.srcMemoryType = chance(85) ? CU_MEMORYTYPE_DEVICE : (CUmemorytype)pick_int();
            c.dstMemoryType = chance(85) ? CU_MEMORYTYPE_DEVICE : (CUmemorytype)pick_int();
            c.srcDevice = pick_ptr(P);
            c.dstDevice = pick_ptr(P);
            c.srcHost = (const void *)(uintptr_t)rnd(); /* never used: the server refuses host types */
            c.WidthInBytes = chance(85) ? rndn(4096) : pick_size();
            c.Height = chance(85) ? 1 : pick_size();
            c.Depth = chance(85) ? 1 : pick_size();
            c.srcPitch = chance(80) ? 0 : pick_size();
            c.dstPitch = chance(80) ? 0 : pick_size();
            c.srcXInBytes = chance(85) ? 0 : pick_size();
            put(a, &c, sizeof c);
            break;
        }
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
        case 'g': { /* u32 n + n atomic operations (cuDeviceGetP2PAtomicCapabilities): mostly valid ones */
            uint32_t n = chance(80) ? 1 + (uint32_t)rndn(16) : chance(50) ? 0 : (uint32_t)rnd();
            put32(a, n);
            for (uint32_t k = 0; k < n && k < 2048; k++) put32(a, chance(85) ? (uint32_t)rndn(13) : (uint32_t)rnd());
            if (n == 0 || n > 1024) return 1; /* outside the server's bound (server/replay/device.c): malformed */
            break;
        }
        case '5': { /* cuMemBatchDecompressAsync: u64 n, u32 flags, u8 want, n CUmemDecompressParams (mostly few,
                     * pointers mostly of the session's memory); more than the server's 4096 is malformed */
            uint64_t n = chance(85) ? rndn(5) : chance(50) ? 4096 + rndn(3) : rnd();
            put64(a, n);
            put32(a, chance(90) ? 0 : (uint32_t)rnd());
            put8(a, (uint8_t)rndn(2));
            if (n > 4096) return 1;
            for (uint64_t k = 0; k < n; k++) {
                CUmemDecompressParams d;
                memset(&d, 0, sizeof d);
                d.srcNumBytes = chance(80) ? rndn(4096) : pick_size();
                d.dstNumBytes = chance(80) ? rndn(4096) : pick_size();
                d.src = (const void *)(uintptr_t)pick_ptr(P);
                d.dst = (void *)(uintptr_t)pick_ptr(P);
                d.dstActBytes = (cuuint32_t *)(uintptr_t)pick_ptr(P);
                d.algo = chance(85) ? CU_MEM_DECOMPRESS_ALGORITHM_DEFLATE : (CUmemDecompressAlgorithm)rnd();
                if (chance(5)) d.padding[rndn(sizeof d.padding)] = (unsigned char)rnd();
                put(a, &d, sizeof d);
            }
            break;
        }
        case '6': { /* cuLogsDumpToMemory's u8 of given pointers: bits past 2 are malformed */
            uint8_t g = chance(95) ? (uint8_t)rndn(8) : (uint8_t)rnd();
            put8(a, g);
            if (g > 7) return 1;
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
        case 'v': { /* a kernel node attribute value: random bytes, an event id in it now and then */
            CUkernelNodeAttrValue v;
            uint8_t *raw = (uint8_t *)&v;
            for (size_t i = 0; i < sizeof v; i++) raw[i] = (uint8_t)rnd();
            if (chance(30)) v.programmaticEvent.event = (CUevent)(uintptr_t)pick_handle(P, FGH_EVENT);
            put(a, &v, sizeof v);
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
        case 'J': put_jit_options(a); break;
        case 'n': put_tensor_map(P, op, a); break;
        case 'u': put_memops(P, a); break;
        case 'd': put64(a, pick_handle(P, FGH_USEROBJECT)); break;
        case 'f': put64(a, pick_handle(P, FGH_GREENCTX)); break;
        case '1': put64(a, pick_handle(P, FGH_DEVRESOURCEDESC)); break;
        case '2': { /* u8 present + a CUdevResource when present (cuDevSmResourceSplitByCount's input) */
            uint8_t has = chance(90);
            put8(a, has);
            if (has) put_resource(P, a);
            break;
        }
        case '4': { /* u32 n, u8 present, n CUdevResources (cuDevResourceGenerateDesc; more than 1024: refused) */
            uint32_t n = chance(90) ? 1 + (uint32_t)rndn(3) : chance(50) ? 0 : 1025;
            uint8_t has = chance(95);
            put32(a, n);
            put8(a, has);
            for (uint32_t k = 0; has && k < n && n <= 1024; k++) put_resource(P, a);
            if (n > 1024) return 1;
            break;
        }
        case 'j': put64(a, pick_handle(P, FGH_LINKSTATE)); break;
        case 'o': put64(a, chance(75) ? 0 : chance(50) ? 1 + rndn(64 << 10) : rnd()); break;
        case 'k': { /* cuLinkAddData_v2: an image load whose extra bytes are the link's arguments */
            buf img = {0};
            int ignored = EXP_ANY;
            (void)build_image_load(pre, &img, &ignored);
            if (img.n >= 40) put(a, img.b, 40); /* name and size */
            free(img.b);
            buf x = {0};
            put64(&x, pick_handle(P, FGH_LINKSTATE));
            put32(&x, chance(80) ? (uint32_t)rndn(3) : (uint32_t)rnd()); /* PTX, cubin, fatbin, or anything */
            uint32_t has = chance(90) ? (uint32_t)rndn(2) : (uint32_t)rnd();
            put32(&x, has);
            if (has == 1) {
                static const char nm[] = "fuzz.ptx";
                uint32_t len = chance(90) ? (uint32_t)sizeof nm : (uint32_t)rndn(sizeof nm + 4);
                put32(&x, len);
                put(&x, nm, len <= sizeof nm ? len : sizeof nm);
            }
            put_jit_options(&x);
            uint32_t claimed = chance(95) ? (uint32_t)x.n : (uint32_t)rnd();
            put32(a, claimed);
            put(a, x.b, x.n);
            free(x.b);
            *expect = EXP_ANY;
            break;
        }
        case 'H':
            if ((op == FG_OP_cuModuleLoadDataEx || op == FG_OP_cuLibraryLoadData) && chance(30)) {
                /* JIT options in the extra bytes (server/replay/module.c): the image is answered for first, so
                 * the load's expectation stands; the options' own refusals come after it */
                buf img = {0};
                int bad = build_image_load(pre, &img, expect);
                if (!bad && img.n >= 40) {
                    put(a, img.b, 40); /* name and size */
                    buf x = {0};
                    put_jit_options(&x);
                    put32(a, (uint32_t)x.n);
                    put(a, x.b, x.n);
                    free(x.b);
                } else {
                    put(a, img.b, img.n);
                }
                free(img.b);
                if (bad) return 1;
            } else if (build_image_load(pre, a, expect)) {
                return 1;
            }
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
