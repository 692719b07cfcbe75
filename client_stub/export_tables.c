/* export_tables.c — cuGetExportTable: the driver's private function tables that the CUDA runtime (static or
 * shared) requires before anything else works. Each table is an array of function pointers, most with their
 * own size in slot 0. What each slot does is a fact about the real driver (see
 * shared/reference/cuda-driver-private-tables.md); fargpu answers them from the stub: module loads go to the
 * server like cuModuleLoadData, context-local storage is client state, the integrity check is computed here
 * (integrity.c). A slot fargpu does not know returns CUDA_ERROR_NOT_SUPPORTED with one log line naming it; an
 * unknown table id answers CUDA_ERROR_NOT_FOUND (logged once), as for a feature this driver lacks. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "integrity.h"

#define SLOTS(n) ((void *)(uintptr_t)((n) * sizeof(void *)))

/* A slot whose meaning fargpu does not know: log once (table and slot), refuse. */
#define MISSING(tbl, slot)                                                               \
    static CUresult missing_##tbl##_##slot(void) {                                       \
        static int logged;                                                               \
        return fgc_unsupported("private table " #tbl " slot " #slot, &logged);          \
    }
#define M(tbl, slot) ((void *)missing_##tbl##_##slot)

/* ---- CUDART_INTERFACE: module registration for the runtime's fatbins, the primary context ---- */
static CUresult cudart_module_from_fatbin(CUmodule *mod, const void *wrapper) {
    if (!mod || !wrapper) return CUDA_ERROR_INVALID_VALUE;
    return fgc_cuModuleLoadData(mod, wrapper);
}

static CUresult cudart_primary_ctx(CUcontext *pctx, CUdevice dev) {
    fgc_log(FGC_LOG_TRACE, "= cudart primary ctx %d", dev);
    /* The runtime asks for the device's primary context; one retain per device is kept for the process. */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static CUcontext cached[64];
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= 64) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&mu);
    CUresult r = CUDA_SUCCESS;
    if (!cached[dev]) r = cuDevicePrimaryCtxRetain(&cached[dev], dev);
    if (r == CUDA_SUCCESS) *pctx = cached[dev];
    pthread_mutex_unlock(&mu);
    return r;
}

static CUresult cudart_module_from_fatbin_ext(CUmodule *mod, const void *wrapper, void *a3, void *a4,
                                              unsigned a5) {
    if (a3 || a4 || a5) {
        static int logged;
        return fgc_unsupported("private table CUDART_INTERFACE slot 6 with extra arguments", &logged);
    }
    return cudart_module_from_fatbin(mod, wrapper);
}

static void cudart_noop_size(size_t n) { (void)n; }

static CUresult cudart_module_from_fatbin_ext2(const void *fatbin, CUmodule *mod, void *a3, void *a4,
                                               unsigned a5) {
    if (a3 || a4 || a5) {
        static int logged;
        return fgc_unsupported("private table CUDART_INTERFACE slot 8 with extra arguments", &logged);
    }
    return cudart_module_from_fatbin(mod, fatbin);
}

static CUresult cudart_load_compilers(void) { return CUDA_SUCCESS; /* the server's driver JITs */ }

MISSING(CUDART_INTERFACE, 3)
MISSING(CUDART_INTERFACE, 4)
MISSING(CUDART_INTERFACE, 5)
MISSING(CUDART_INTERFACE, 9)
MISSING(CUDART_INTERFACE, 10)
MISSING(CUDART_INTERFACE, 11)

static void *const cudart_interface[13] = {
    SLOTS(13),
    (void *)cudart_module_from_fatbin,
    (void *)cudart_primary_ctx,
    M(CUDART_INTERFACE, 3),
    M(CUDART_INTERFACE, 4),
    M(CUDART_INTERFACE, 5),
    (void *)cudart_module_from_fatbin_ext,
    (void *)cudart_noop_size,
    (void *)cudart_module_from_fatbin_ext2,
    M(CUDART_INTERFACE, 9),
    M(CUDART_INTERFACE, 10),
    M(CUDART_INTERFACE, 11),
    (void *)cudart_load_compilers,
};

/* ---- TOOLS_TLS and TOOLS_RUNTIME_CALLBACK_HOOKS: profiler hooks; no tools attach through fargpu ---- */
static CUresult tools_zero(void) {
    fgc_log(FGC_LOG_TRACE, "= tools hook");
    return CUDA_SUCCESS;
}

/* Slot 2 answers the calling thread's current context; cuBLASLt keys its kernel registry on it. */
static CUresult tools_thread_context(CUcontext *ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = (CUcontext)(uintptr_t)fgc_ctx_current();
    return CUDA_SUCCESS;
}

static void *const tools_tls[4] = {SLOTS(4), (void *)tools_zero, (void *)tools_thread_context, (void *)tools_zero};

static unsigned char hooks_buffer1[1024];
static uint32_t hooks_buffer2[14];

static void hooks_get_buffer1(void **p, size_t *n) {
    if (p) *p = hooks_buffer1;
    if (n) *n = sizeof hooks_buffer1;
}

static void hooks_get_buffer2(void **p, size_t *n) {
    if (p) *p = hooks_buffer2;
    if (n) *n = sizeof hooks_buffer2;
}

static void *const tools_hooks[7] = {SLOTS(7),         (void *)tools_zero, (void *)hooks_get_buffer1,
                                     (void *)tools_zero, (void *)tools_zero, (void *)tools_zero,
                                     (void *)hooks_get_buffer2};

/* ---- CONTEXT_LOCAL_STORAGE_INTERFACE_V0301: per-context key/value slots, kept in the stub ---- */
typedef void (*cls_dtor)(CUcontext, void *, void *);
typedef struct {
    uint64_t ctx;
    void *key, *value;
    cls_dtor dtor;
} cls_entry;

static pthread_mutex_t cls_mu = PTHREAD_MUTEX_INITIALIZER;
static cls_entry *cls;
static size_t cls_n, cls_cap;

static uint64_t cls_ctx(CUcontext ctx) { return ctx ? fgc_handle_id(ctx) : fgc_ctx_current(); }

static cls_entry *cls_find(uint64_t ctx, void *key) {
    for (size_t i = 0; i < cls_n; i++)
        if (cls[i].ctx == ctx && cls[i].key == key) return &cls[i];
    return NULL;
}

static CUresult cls_put(CUcontext ctx, void *key, void *value, cls_dtor dtor) {
    uint64_t id = cls_ctx(ctx);
    fgc_log(FGC_LOG_TRACE, "= CLS put ctx %p -> %llx key %p value %p", (void *)ctx, (unsigned long long)id, key, value);
    if (!id) return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&cls_mu);
    cls_entry *e = cls_find(id, key);
    if (!e) {
        if (cls_n == cls_cap) {
            size_t ncap = cls_cap ? cls_cap * 2 : 16;
            cls_entry *ne = realloc(cls, ncap * sizeof *ne);
            if (!ne) {
                pthread_mutex_unlock(&cls_mu);
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            cls = ne;
            cls_cap = ncap;
        }
        e = &cls[cls_n++];
    }
    *e = (cls_entry){id, key, value, dtor};
    pthread_mutex_unlock(&cls_mu);
    return CUDA_SUCCESS;
}

static CUresult cls_delete(CUcontext ctx, void *key) {
    uint64_t id = cls_ctx(ctx);
    fgc_log(FGC_LOG_TRACE, "= CLS delete ctx %p -> %llx key %p", (void *)ctx, (unsigned long long)id, key);
    pthread_mutex_lock(&cls_mu);
    cls_entry *e = cls_find(id, key);
    if (e) *e = cls[--cls_n];
    pthread_mutex_unlock(&cls_mu);
    return CUDA_SUCCESS; /* deleting an absent key is not an error */
}

static CUresult cls_get(void **value, CUcontext ctx, void *key) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = cls_ctx(ctx);
    fgc_log(FGC_LOG_TRACE, "= CLS get ctx %p -> %llx key %p", (void *)ctx, (unsigned long long)id, key);
    pthread_mutex_lock(&cls_mu);
    cls_entry *e = cls_find(id, key);
    *value = e ? e->value : NULL;
    pthread_mutex_unlock(&cls_mu);
    /* A key never stored is "not found" (callers such as cuBLAS then create and store their state). */
    return e ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

void fgc_cls_context_gone(uint64_t ctx) {
    /* Called when a context is destroyed: run each slot's destructor, outside the lock. */
    for (;;) {
        cls_entry e = {0};
        int found = 0;
        pthread_mutex_lock(&cls_mu);
        for (size_t i = 0; i < cls_n; i++)
            if (cls[i].ctx == ctx) {
                e = cls[i];
                cls[i] = cls[--cls_n];
                found = 1;
                break;
            }
        pthread_mutex_unlock(&cls_mu);
        if (!found) return;
        if (e.dtor) e.dtor((CUcontext)(uintptr_t)ctx, e.key, e.value);
    }
}

MISSING(CONTEXT_LOCAL_STORAGE, 3)
static void *const context_local_storage[4] = {(void *)cls_put, (void *)cls_delete, (void *)cls_get,
                                               M(CONTEXT_LOCAL_STORAGE, 3)};

/* ---- CTX_CREATE_BYPASS ---- */
static CUresult ctx_create_bypass(CUcontext *pctx, unsigned flags, CUdevice dev) {
    return fgc_cuCtxCreate_v4(pctx, NULL, flags, dev);
}
static void *const ctx_create_bypass_table[2] = {SLOTS(2), (void *)ctx_create_bypass};

/* ---- HEAP_ACCESS, DEVICE_EXTENDED_RT: meanings not established; refused and logged ---- */
MISSING(HEAP_ACCESS, 1)
MISSING(HEAP_ACCESS, 2)
static void *const heap_access[3] = {SLOTS(3), M(HEAP_ACCESS, 1), M(HEAP_ACCESS, 2)};

#define X(n) MISSING(DEVICE_EXTENDED_RT, n)
X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25)
#undef X
#define X(n) M(DEVICE_EXTENDED_RT, n)
static void *const device_extended_rt[26] = {
    SLOTS(26), X(1),  X(2),  X(3),  X(4),  X(5),  X(6),  X(7),  X(8),  X(9),  X(10), X(11), X(12),
    X(13),     X(14), X(15), X(16), X(17), X(18), X(19), X(20), X(21), X(22), X(23), X(24), X(25)};
#undef X

/* ---- INTEGRITY_CHECK ---- */
static CUresult integrity_check(unsigned version, uint64_t unix_seconds, uint64_t result[2]);
MISSING(INTEGRITY_CHECK, 2)
static void *const integrity_table[3] = {SLOTS(3), (void *)integrity_check, M(INTEGRITY_CHECK, 2)};

static CUresult integrity_check(unsigned version, uint64_t unix_seconds, uint64_t result[2]) {
    if (!result) return CUDA_ERROR_INVALID_VALUE;
    int n = 0;
    CUresult r = cuDeviceGetCount(&n);
    if (r != CUDA_SUCCESS) return r;
    if (n < 0 || n > 64) return CUDA_ERROR_INVALID_VALUE;
    fgc_integrity_device devs[64];
    memset(devs, 0, sizeof devs);
    for (int d = 0; d < n; d++) {
        CUuuid u;
        if ((r = cuDeviceGetUuid_v2(&u, d)) != CUDA_SUCCESS ||
            (r = cuDeviceGetAttribute(&devs[d].pci_domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d)) != CUDA_SUCCESS ||
            (r = cuDeviceGetAttribute(&devs[d].pci_bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d)) != CUDA_SUCCESS ||
            (r = cuDeviceGetAttribute(&devs[d].pci_device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d)) != CUDA_SUCCESS)
            return r;
        memcpy(devs[d].uuid, u.bytes, 16);
    }
    int drv = 0;
    cuDriverGetVersion(&drv);
    fgc_integrity_input in = {
        .driver_version = (uint32_t)drv,
        .requested = version,
        .pid = (uint32_t)getpid(),
        .tid = (uint32_t)(uintptr_t)pthread_self(),
        .cudart_table = cudart_interface,
        .integrity_table = integrity_table,
        .fn_address = integrity_table[1],
        .unix_seconds = unix_seconds,
    };
    fgc_integrity_digest(&in, devs, n, result);
    fgc_log(FGC_LOG_DEBUG, "integrity check: version %u, %d device(s)", version, n);
    return CUDA_SUCCESS;
}

/* ---- CONTEXT_CHECKS ---- */
static CUresult context_check(CUcontext ctx, uint32_t *r1, const void **r2) {
    fgc_log(FGC_LOG_TRACE, "= context check %p", (void *)ctx);
    (void)ctx;
    if (r1) *r1 = 0;
    if (r2) *r2 = NULL;
    return CUDA_SUCCESS;
}
static uint32_t context_check_fn3(void) { return 0; }
MISSING(CONTEXT_CHECKS, 1)
static void *const context_checks[4] = {SLOTS(4), M(CONTEXT_CHECKS, 1), (void *)context_check,
                                        (void *)context_check_fn3};

/* ---- 21318c60: context identity and streams; the driver's table has 93 slots. Known: slot 4 is a context's
 * unique id, the same number cuCtxGetId gives (cuBLASLt keys its kernel registry on it); slot 51 turns a public
 * stream handle into the driver's stream object (ctx, stream, &object, per_thread: the NULL stream means the
 * legacy or the per-thread stream) and slot 39 gives that object's unique id (ctx, object, &id), as cuStreamGetId
 * does (cuBLAS keys its per-stream state on it). Here the stream object is the public handle. Every other slot
 * is logged and refused. ---- */
static CUresult ctxid_stream_from_public(CUcontext ctx, CUstream stream, void **object, int per_thread) {
    (void)ctx;
    if (!object) return CUDA_ERROR_INVALID_VALUE;
    *object = (void *)(stream ? stream : per_thread ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY);
    return CUDA_SUCCESS;
}

static CUresult ctxid_stream_identity(CUcontext ctx, const void *object, uint64_t *id) {
    (void)ctx;
    if (!object || !id) return CUDA_ERROR_INVALID_VALUE;
    unsigned long long v = 0;
    CUresult r = cuStreamGetId((CUstream)(uintptr_t)object, &v);
    if (r == CUDA_SUCCESS) *id = (uint64_t)v;
    return r;
}

#define X(n) MISSING(CONTEXT_IDENTITY, n)
X(1) X(2) X(3) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19)
X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31) X(32) X(33) X(34) X(35)
X(36) X(37) X(38) X(40) X(41) X(42) X(43) X(44) X(45) X(46) X(47) X(48) X(49) X(50) X(52) X(53)
X(54) X(55) X(56) X(57) X(58) X(59) X(60) X(61) X(62) X(63) X(64) X(65) X(66) X(67) X(68) X(69)
X(70) X(71) X(72) X(73) X(74) X(75) X(76) X(77) X(78) X(79) X(80) X(81) X(82) X(83) X(84) X(85)
X(86) X(87) X(88) X(89) X(90) X(91) X(92)
#undef X
#define X(n) M(CONTEXT_IDENTITY, n)
static void *const context_identity[93] = {
    SLOTS(93), X(1), X(2), X(3), (void *)cuCtxGetId, X(5), X(6), X(7), X(8), X(9), X(10), X(11), X(12), X(13),
    X(14), X(15), X(16), X(17), X(18), X(19), X(20), X(21), X(22), X(23), X(24), X(25), X(26), X(27), X(28), X(29),
    X(30), X(31), X(32), X(33), X(34), X(35), X(36), X(37), X(38), (void *)ctxid_stream_identity, X(40), X(41),
    X(42), X(43), X(44), X(45), X(46), X(47), X(48), X(49), X(50), (void *)ctxid_stream_from_public, X(52), X(53),
    X(54), X(55), X(56), X(57), X(58), X(59), X(60), X(61), X(62), X(63), X(64), X(65), X(66), X(67), X(68), X(69),
    X(70), X(71), X(72), X(73), X(74), X(75), X(76), X(77), X(78), X(79), X(80), X(81), X(82), X(83), X(84), X(85),
    X(86), X(87), X(88), X(89), X(90), X(91), X(92)};
#undef X

/* ---- 1734dc26: asked for by cuBLASLt's heuristics, which call slot 4 without checking the answer; served so
 * that every call is logged and refused instead of jumping through NULL. Meanings not established. ---- */
#define X(n) MISSING(T1734DC26, n)
X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#undef X
#define X(n) M(T1734DC26, n)
static void *const t1734dc26[16] = {SLOTS(16), X(1), X(2),  X(3),  X(4),  X(5),  X(6),  X(7),
                                    X(8),      X(9), X(10), X(11), X(12), X(13), X(14), X(15)};
#undef X

/* ---- 6e163fbe: function introspection, asked for by cuFFT. Slot 7 walks a module's functions:
 * (ctx, module, visit(opaque, function, owner), opaque, ...) calls visit once per function and answers how many
 * there were (cuFFT finds the kernel of a module it built this way). Here the functions come from
 * cuModuleEnumerateFunctions and the owner passed is the module. Every other slot is logged and refused. ---- */
typedef void (*function_visitor)(void *opaque, void *function, uint64_t owner);

static uint64_t module_functions(uint64_t ctx, uint64_t mod, uint64_t visit, uint64_t opaque, uint64_t a4,
                                 uint64_t a5) {
    (void)ctx;
    (void)a4;
    (void)a5;
    unsigned count = 0;
    if (!visit || cuModuleGetFunctionCount(&count, (CUmodule)(uintptr_t)mod) != CUDA_SUCCESS || count > 65536)
        return 0;
    CUfunction *fns = (CUfunction *)calloc(count ? count : 1, sizeof *fns);
    if (!fns) return 0;
    CUresult r = count ? cuModuleEnumerateFunctions(fns, count, (CUmodule)(uintptr_t)mod) : CUDA_SUCCESS;
    fgc_log(FGC_LOG_DEBUG, "private table T6E163FBE slot 7: module 0x%llx has %u function(s) (%d)",
            (unsigned long long)mod, count, (int)r);
    for (unsigned i = 0; i < count && r == CUDA_SUCCESS; i++)
        ((function_visitor)(uintptr_t)visit)((void *)(uintptr_t)opaque, (void *)fns[i], mod);
    free(fns);
    return r == CUDA_SUCCESS ? count : 0;
}

#define X(n) MISSING(T6E163FBE, n)
X(1) X(2) X(3) X(4) X(5) X(6) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20)
X(21) X(22) X(23) X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31) X(32) X(33) X(34) X(35) X(36) X(37) X(38)
X(39) X(40) X(41) X(42) X(43) X(44) X(45) X(46) X(47) X(48) X(49) X(50) X(51) X(52) X(53) X(54) X(55) X(56)
X(57) X(58) X(59) X(60) X(61) X(62) X(63)
#undef X
#define X(n) M(T6E163FBE, n)
static void *const t6e163fbe[64] = {
    SLOTS(64), X(1),  X(2),  X(3),  X(4),  X(5),  X(6),  (void *)module_functions,
    X(8),      X(9),  X(10), X(11), X(12), X(13), X(14), X(15),
    X(16),     X(17), X(18), X(19), X(20), X(21), X(22), X(23), X(24), X(25), X(26), X(27), X(28), X(29), X(30), X(31),
    X(32),     X(33), X(34), X(35), X(36), X(37), X(38), X(39), X(40), X(41), X(42), X(43), X(44), X(45), X(46), X(47),
    X(48),     X(49), X(50), X(51), X(52), X(53), X(54), X(55), X(56), X(57), X(58), X(59), X(60), X(61), X(62), X(63)};
#undef X

/* ---- f8cff951: CUDA 13 requirements and logging, several adjacent sub-tables each with its size first ----
 * Sub-tables start at slots 0 (3 slots), 4 (2), 6 (4), 10 (2), 14 (7) and 22 (15); slots between them stay
 * NULL. Known: slot 1 reports a library's message (domain, severity, printf format, va_list); slot 25 checks
 * the caller's requirements (success: the remote driver is a CUDA 13.0 driver). */
static void requirements_log(const char *domain, int severity, const char *format, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, format ? format : "", ap);
    fgc_log(FGC_LOG_WARN, "CUDA %s (severity %d): %s", domain ? domain : "library", severity, msg);
}

static CUresult requirements_check(unsigned requirement, const void *state, const void *requirements) {
    (void)requirement;
    (void)state;
    (void)requirements;
    return CUDA_SUCCESS;
}

#define X(n) MISSING(F8CFF951, n)
X(2) X(5) X(7) X(8) X(9) X(11) X(15) X(16) X(17) X(18) X(19) X(20) X(23) X(24) X(26) X(27) X(28) X(29)
X(30) X(31) X(32) X(33) X(34) X(35) X(36)
#undef X
#define X(n) [n] = M(F8CFF951, n)
static void *const f8cff951[37] = {
    [0] = SLOTS(3),  [1] = (void *)requirements_log, X(2),
    [4] = SLOTS(2),  X(5),
    [6] = SLOTS(4),  X(7), X(8), X(9),
    [10] = SLOTS(2), X(11),
    [14] = SLOTS(7), X(15), X(16), X(17), X(18), X(19), X(20),
    [22] = SLOTS(15), X(23), X(24), [25] = (void *)requirements_check, X(26), X(27), X(28), X(29), X(30), X(31),
    X(32), X(33), X(34), X(35), X(36)};
#undef X

/* ---- fargpu's own table (id "fargpu-node-v1\0\0"): what the node told the stub, for the NVML shim beside it.
 * Slot 1: the node driver's version string, (char *buf, size_t cap) -> CUDA_ERROR_NOT_FOUND when the node did
 * not say, CUDA_ERROR_INVALID_VALUE when buf is NULL or too small. ---- */
static CUresult node_driver_version(char *buf, size_t cap) {
    const char *v = fgc_remote_driver_version();
    if (!buf) return CUDA_ERROR_INVALID_VALUE;
    if (!v[0]) return CUDA_ERROR_NOT_FOUND;
    size_t n = strlen(v);
    if (n >= cap) return CUDA_ERROR_INVALID_VALUE;
    memcpy(buf, v, n + 1);
    return CUDA_SUCCESS;
}

static void *const fargpu_node[2] = {SLOTS(2), (void *)node_driver_version};

/* ---- lookup ---- */
typedef struct {
    unsigned char id[16];
    const char *name;
    void *const *table;
} known_table;

static const known_table TABLES[] = {
    {{0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a, 0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9},
     "CUDART_INTERFACE", cudart_interface},
    {{0x42, 0xd8, 0x5a, 0x81, 0x23, 0xf6, 0xcb, 0x47, 0x82, 0x98, 0xf6, 0xe7, 0x8a, 0x3a, 0xec, 0xdc},
     "TOOLS_TLS", tools_tls},
    {{0xa0, 0x94, 0x79, 0x8c, 0x2e, 0x74, 0x2e, 0x74, 0x93, 0xf2, 0x08, 0x00, 0x20, 0x0c, 0x0a, 0x66},
     "TOOLS_RUNTIME_CALLBACK_HOOKS", tools_hooks},
    {{0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11, 0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93},
     "CONTEXT_LOCAL_STORAGE_INTERFACE_V0301", context_local_storage},
    {{0x0c, 0xa5, 0x0b, 0x8c, 0x10, 0x04, 0x92, 0x9a, 0x89, 0xa7, 0xd0, 0xdf, 0x10, 0xe7, 0x72, 0x86},
     "CTX_CREATE_BYPASS", ctx_create_bypass_table},
    {{0x19, 0x5b, 0xcb, 0xf4, 0xd6, 0x7d, 0x02, 0x4a, 0xac, 0xc5, 0x1d, 0x29, 0xce, 0xa6, 0x31, 0xae},
     "HEAP_ACCESS", heap_access},
    {{0xb1, 0x05, 0x41, 0xe1, 0xf7, 0xc7, 0xc7, 0x4a, 0x9f, 0x64, 0xf2, 0x23, 0xbe, 0x99, 0xf1, 0xe2},
     "DEVICE_EXTENDED_RT", device_extended_rt},
    {{0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b, 0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2},
     "INTEGRITY_CHECK", integrity_table},
    {{0x26, 0x3e, 0x88, 0x60, 0x7c, 0xd2, 0x61, 0x43, 0x92, 0xf6, 0xbb, 0xd5, 0x00, 0x6d, 0xfa, 0x7e},
     "CONTEXT_CHECKS", context_checks},
    {{0x21, 0x31, 0x8c, 0x60, 0x97, 0x14, 0x32, 0x48, 0x8c, 0xa6, 0x41, 0xff, 0x73, 0x24, 0xc8, 0xf2},
     "CONTEXT_IDENTITY", context_identity},
    {{0x17, 0x34, 0xdc, 0x26, 0x80, 0x0d, 0x47, 0x45, 0x87, 0x26, 0xc0, 0xf1, 0xe7, 0xdd, 0x8b, 0xca},
     "T1734DC26", t1734dc26},
    {{0x6e, 0x16, 0x3f, 0xbe, 0xb9, 0x58, 0x44, 0x4d, 0x83, 0x5c, 0xe1, 0x82, 0xaf, 0xf1, 0x99, 0x1e},
     "T6E163FBE", t6e163fbe},
    {{'f', 'a', 'r', 'g', 'p', 'u', '-', 'n', 'o', 'd', 'e', '-', 'v', '1', 0, 0}, "FARGPU_NODE", fargpu_node},
    {{0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e, 0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9},
     "F8CFF951", f8cff951},
};

static void log_unknown_once(const CUuuid *id) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static CUuuid seen[64];
    static int nseen;
    pthread_mutex_lock(&mu);
    int known = 0;
    for (int i = 0; i < nseen; i++)
        if (!memcmp(&seen[i], id, sizeof *id)) known = 1;
    if (!known && nseen < 64) seen[nseen++] = *id;
    pthread_mutex_unlock(&mu);
    const unsigned char *b = (const unsigned char *)id->bytes;
    if (known) {
        fgc_log(FGC_LOG_DEBUG, "cuGetExportTable(%02x%02x%02x%02x-...) again", b[0], b[1], b[2], b[3]);
        return;
    }
    fgc_log(FGC_LOG_INFO,
            "cuGetExportTable(%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x): an unknown "
            "private table; fargpu answers CUDA_ERROR_NOT_FOUND (callers treat it as an optional feature)",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

CUresult fgc_cuGetExportTable(const void **ppExportTable, const CUuuid *pExportTableId) {
    if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
    *ppExportTable = NULL;
    for (size_t i = 0; i < sizeof TABLES / sizeof TABLES[0]; i++)
        if (!memcmp(TABLES[i].id, pExportTableId->bytes, 16)) {
            fgc_log(FGC_LOG_DEBUG, "cuGetExportTable: serving %s", TABLES[i].name);
            *ppExportTable = TABLES[i].table;
            return CUDA_SUCCESS;
        }
    log_unknown_once(pExportTableId);
    return CUDA_ERROR_NOT_FOUND;
}
