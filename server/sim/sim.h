/* sim.h - internal interface of the simulated CUDA device (libfargpu_sim.so).
 *
 * The simulated device is a test double of the CUDA driver API: it exports a subset of the real libcuda.so.1
 * symbols (same C ABI, same versioned names as cuda.h maps them), keeps "device" memory in host RAM and answers
 * like a real sm_90 GPU would for the calls it implements. See README.md in this folder for what it does and
 * does not do.
 *
 * Concurrency: every exported entry point takes the one global lock (sim_lock) for its whole duration. Streams
 * execute their work synchronously at enqueue, so a single lock gives the same ordering a GPU stream would.
 *
 * Trust: every handle and device pointer passed in is untrusted (the fargpu server replays bytes from remote
 * clients). Handles are looked up in the live-handle registry (sim_registry.c) before anything is dereferenced;
 * device ranges are checked against the segment map (sim_vaspace.c). Host pointers (the source of an H2D copy,
 * output parameters) belong to the caller and are trusted, as with the real driver. */
#ifndef FARGPU_SIM_H
#define FARGPU_SIM_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_API __attribute__((visibility("default")))

#define SIM_MAX_DEVICES 16
#define SIM_MAX_PEERS 64 /* peer contexts one context may have enabled at once */
#define SIM_GRANULARITY ((size_t)2 << 20) /* VMM allocation granularity: 2 MiB, as on Hopper */
#define SIM_HOST_PHYS (-1) /* the "device" of VMM physical memory on the host (CU_MEM_LOCATION_TYPE_HOST_NUMA) */
#define SIM_PAGE ((size_t)4096)

/* ---- global lock and state (sim_state.c) ---- */
void sim_lock(void);
void sim_unlock(void);

struct sim_ctx;
struct sim_green;

struct sim_device {
    uint64_t total_mem; /* simulated device memory size (FARGPU_SIM_MEM_BYTES, default 16 GiB) */
    uint64_t used_mem;  /* bytes charged by cuMemAlloc, cuMemCreate and module globals */
    struct sim_ctx *primary;
    int phys; /* the physical device it is (CUDA_VISIBLE_DEVICES may hide and reorder them): UUID, PCI bus id */
};

struct sim_global {
    int initialized;
    int ndev;
    struct sim_device dev[SIM_MAX_DEVICES];
};
extern struct sim_global sim_g;

CUresult sim_check_init(void);                     /* CUDA_ERROR_NOT_INITIALIZED before cuInit */
CUresult sim_check_device(CUdevice dev);           /* init + ordinal range */
CUresult sim_charge(int device, uint64_t bytes);   /* CUDA_ERROR_OUT_OF_MEMORY when over the total */
void sim_uncharge(int device, uint64_t bytes);
void sim_log_once(const char *what, const char *detail); /* one stderr line per distinct `what` */
/* A message in the driver's error log for an error an entry point returns (sim_logs.c: cuLogsDumpToMemory). */
void sim_log_error(const char *entry, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t sim_now_ns(void);                         /* CLOCK_MONOTONIC */
/* Which physical devices are visible, in order (sim_visible.c): CUDA_VISIBLE_DEVICES as the driver reads it. */
int sim_visible_devices(int nphys, int *out);
void sim_phys_uuid(int phys, unsigned char out[16]); /* the fixed UUID of physical device `phys` */

/* ---- live-handle registry (sim_registry.c) ----
 * Every handle object starts with struct sim_obj. Lookups compare the handle value against the set of live
 * objects; an unknown value is never dereferenced. */
enum sim_kind {
    SIM_KIND_CTX = 1,
    SIM_KIND_STREAM,
    SIM_KIND_EVENT,
    SIM_KIND_MODULE,
    SIM_KIND_FUNC,
    SIM_KIND_PHYS,
    SIM_KIND_LIBRARY, /* context-independent (sim_library.c) */
    SIM_KIND_KERNEL,  /* a kernel of a library: usable wherever a function is (sim_func_resolve) */
    SIM_KIND_ARRAY,   /* a CUDA array (sim_array.c) */
    SIM_KIND_LINK,    /* a JIT link state (sim_link.c): process-wide */
    SIM_KIND_GREEN,   /* a green context (sim_green.c): process-wide */
    SIM_KIND_DESC,    /* a resource descriptor (sim_green.c): process-wide, never freed (the driver has no destroy) */
};

struct sim_obj {
    uint32_t kind;
    struct sim_ctx *ctx; /* owning context (NULL for process-wide objects such as VMM handles) */
};

int sim_reg_add(void *obj);                          /* 0 on success, -1 on out of memory */
void sim_reg_remove(void *obj);
void *sim_reg_find(const void *handle, uint32_t kind); /* NULL if not a live object of that kind */
/* Collects up to `max` live objects of `kind` owned by `ctx` (any owner if ctx is NULL); returns the count. */
size_t sim_reg_collect(uint32_t kind, const struct sim_ctx *ctx, void **out, size_t max);
size_t sim_reg_count(void);

/* ---- contexts (sim_context.c) ---- */
struct sim_ctx {
    struct sim_obj h;
    int device;
    unsigned int flags;
    int primary;           /* the device's primary context */
    int active;            /* primary: retained at least once and not released to zero / reset */
    unsigned int refcount; /* primary: retain count */
    unsigned long long id; /* cuCtxGetId: unique in the process; a primary context gets a new one when activated */
    unsigned long long peers[SIM_MAX_PEERS]; /* ids of the contexts whose allocations it may access (sim_peer.c) */
    unsigned int npeers;
    struct sim_green *green; /* a context converted from this green context (sim_green.c); NULL otherwise */
    size_t limit[7];         /* cuCtxSetLimit values, CU_LIMIT_STACK_SIZE .. PERSISTING_L2_CACHE_SIZE */
    unsigned int limit_set;  /* which of them were set (bit per limit); the others have the defaults */
};
unsigned long long sim_ctx_next_id(void);
/* The calling thread's current context, validated (live and active), else CUDA_ERROR_INVALID_CONTEXT: its home
 * (sim_ctx_home), which owns what is made in it. sim_current_ctx_exact: the context on the stack itself (streams
 * and context queries). */
CUresult sim_current_ctx(struct sim_ctx **out);
CUresult sim_current_ctx_exact(struct sim_ctx **out);
/* c, or for a context converted from a green context, its device's primary context. */
struct sim_ctx *sim_ctx_home(struct sim_ctx *c);
void sim_ctx_unstack(CUcontext c); /* removes c from the calling thread's context stack */
/* Frees everything a context owns (streams, events, modules, allocations, pinned host memory). */
void sim_ctx_release_resources(struct sim_ctx *ctx);

/* ---- device address space (sim_vaspace.c) ----
 * A segment is a host range that the simulated device can access: a cuMemAlloc allocation, a VMM mapping, a
 * module global or pinned host memory. Device pointers are host addresses (identity mapping, unified
 * addressing). */
enum sim_seg_kind { SIM_SEG_ALLOC = 1, SIM_SEG_VMM, SIM_SEG_GLOBAL, SIM_SEG_HOST };
#define SIM_PROT_R 1
#define SIM_PROT_W 2

struct sim_phys;
struct sim_seg {
    uintptr_t base;
    size_t size;
    int kind;
    int prot;               /* SIM_PROT_* the device may use */
    int device;
    struct sim_ctx *owner;  /* ALLOC/HOST: owning context; NULL otherwise */
    const void *module;     /* GLOBAL: owning module */
    struct sim_phys *phys;  /* VMM: backing physical allocation */
    size_t map_len;         /* ALLOC/HOST/GLOBAL: length of the host mapping (page rounded) */
    uint64_t charged;       /* bytes charged to the device for this segment */
    unsigned long long id;  /* CU_POINTER_ATTRIBUTE_BUFFER_ID: set by sim_seg_insert, never reused */
    int registered;         /* HOST: the caller's memory, registered with cuMemHostRegister (map_len 0) */
    int dprot[SIM_MAX_DEVICES]; /* VMM: the access cuMemSetAccess gave each device (prot is their union) */
};

int sim_seg_insert(struct sim_seg *seg);           /* 0 ok, -1 out of memory */
void sim_seg_remove(struct sim_seg *seg);
struct sim_seg *sim_seg_find(uintptr_t addr);      /* segment containing addr, or NULL */
struct sim_seg *sim_seg_find_base(uintptr_t addr, int kind); /* segment of that kind starting exactly at addr */
int sim_seg_overlaps(uintptr_t base, size_t size);  /* any segment intersects [base, base+size) */
/* [p, p+n) lies in contiguous segments that all allow `prot`; else CUDA_ERROR_INVALID_VALUE. */
CUresult sim_range_check(CUdeviceptr p, size_t n, int prot);
/* The same, for a kernel running in `ctx`: every segment must also be accessible from its device (sim_peer.c):
 * its own device's memory, a peer context's allocations once peer access to it is enabled, VMM mappings the
 * device was granted with cuMemSetAccess, and pinned host memory. */
CUresult sim_range_check_from(const struct sim_ctx *ctx, CUdeviceptr p, size_t n, int prot);
/* Allocates a host-backed segment (ALLOC, GLOBAL or HOST), charging device memory except for HOST. */
CUresult sim_seg_alloc(int kind, int device, size_t size, struct sim_ctx *owner, const void *module,
                       struct sim_seg **out);
void sim_seg_free(struct sim_seg *seg);            /* unmaps, uncharges, removes and frees */
unsigned long long sim_next_buffer_id(void);       /* process-wide allocation ids, from 1 */
/* VMM mapping details for pointer attributes (sim_vmm.c). */
struct sim_vmm_info {
    uintptr_t resv_base; /* the reservation the mapping lies in */
    size_t resv_size;
    unsigned long long block_id; /* id of the physical allocation */
    unsigned int handle_types;   /* its requestedHandleTypes */
};
void sim_vmm_describe(const struct sim_seg *seg, struct sim_vmm_info *info);

/* sim_vaheap.c: FARGPU_SIM_VA=heap, reservations placed as the real driver places them (hints ignored) */
int sim_vaheap_on(void);
uintptr_t sim_vaheap_take(size_t size, size_t alignment);
int sim_vaheap_give(uintptr_t base, size_t size);
size_t sim_seg_collect_owned(const struct sim_ctx *owner, const void *module, struct sim_seg **out, size_t max);

/* ---- streams and events (sim_stream.c) ---- */
struct sim_stream {
    struct sim_obj h;
    unsigned int flags;
    int priority;
    long long id; /* creation order in this process, from 1 (the launch log names streams by it) */
};
/* Validates a stream argument: NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD or a live stream, and that a
 * context is current. */
CUresult sim_stream_check(CUstream s);
/* sim_stream_check for stream work: a stream under capture refuses work the simulated device does not capture
 * (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, the capture invalidated; sim_capture.c). Called with the lock held. */
CUresult sim_stream_check_op(CUstream s);
/* sim_capture.c: stream work on a capturing stream becomes a graph node. Each returns 0 when s is not under
 * capture (the caller runs the work), else 1 with the outcome in *rc. Called without the lock held. */
int sim_capture_kernel(CUstream s, CUfunction f, const unsigned int grid[3], const unsigned int block[3],
                       unsigned int shmem, void **kernelParams, void **extra, CUresult *rc);
int sim_capture_memset(CUstream s, CUdeviceptr dst, unsigned int value, size_t n, unsigned int width, CUresult *rc);
int sim_capture_copy(CUstream s, CUdeviceptr dst, void *dst_host, CUdeviceptr src, const void *src_host, size_t bytes,
                     CUresult *rc);
int sim_capture_host(CUstream s, CUhostFn fn, void *data, CUresult *rc);
int sim_capture_copy3d(CUstream s, const CUDA_MEMCPY3D *c, CUresult *rc); /* 0 too for arrays (refused there) */
/* sim_capture.c, cross-stream capture: an event recorded on a capturing stream (1: handled, *rc its outcome), a
 * wait for an event recorded in a capture (1: handled), an event destroyed (lock may be held). */
int sim_capture_event_record(CUevent e, CUstream s, CUresult *rc);
int sim_capture_event_wait(CUstream s, CUevent e, CUresult *rc);
void sim_capture_event_gone(CUevent e);
/* sim_capture.c: an unsafe call (an allocation) on this thread: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and the
 * captures it conflicts with invalidated, as the capture modes say; else CUDA_SUCCESS. Without the lock held. */
CUresult sim_capture_unsafe(void);
void sim_stream_destroy_obj(struct sim_stream *s);
/* Creates a stream in ctx (lock held): flags and priority as cuStreamCreateWithPriority takes them. */
CUresult sim_stream_create_in(struct sim_ctx *ctx, CUstream *ph, unsigned int flags, int priority);
/* The green context of a stream (NULL, CU_STREAM_LEGACY or CU_STREAM_PER_THREAD: the current context's), or NULL
 * for one made in an ordinary context (lock held). */
CUresult sim_stream_green(CUstream s, struct sim_green **out);
/* Launch-log id of a validated stream: 0 for NULL / CU_STREAM_LEGACY, -1 for CU_STREAM_PER_THREAD. */
long long sim_stream_id(CUstream s);
void sim_event_destroy_obj(void *ev);
CUresult sim_event_check(CUevent e); /* live event, else CUDA_ERROR_INVALID_HANDLE */
/* cuGreenCtxRecordEvent (record 1: the event must belong to device `device`'s primary context) and
 * cuGreenCtxWaitEvent (record 0): lock held. */
CUresult sim_event_green(CUevent e, int device, int record);

/* ---- modules (sim_module.c) and functions (sim_function.c) ---- */
struct sim_param {
    uint32_t offset;
    uint32_t size;
};
struct sim_kernel_impl;
struct sim_module;
struct sim_library;
struct sim_image_desc;
struct sim_kernel_desc;

/* The settable part of a function (cuFuncSetAttribute / cuFuncSetCacheConfig, or per device for a library
 * kernel through cuKernelSetAttribute / cuKernelSetCacheConfig). */
struct sim_func_cfg {
    int max_dyn_shared; /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: launch limit on dynamic shared memory */
    int carveout;       /* CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, -1 = default */
    int non_portable_cluster;
    int cluster_policy;
    int cache_config;   /* CUfunc_cache */
};

struct sim_func {
    struct sim_obj h;
    struct sim_module *mod;
    char *name;
    uint32_t nparams;
    struct sim_param *params;
    uint32_t param_bytes; /* end of the last parameter */
    int num_regs, shared_bytes, const_bytes, local_bytes, max_threads, ptx_version, binary_version;
    struct sim_func_cfg cfg;
    const struct sim_kernel_impl *impl; /* NULL: the sim cannot execute this kernel */
    int warned;
};
void sim_module_destroy_obj(struct sim_module *m);
/* Fills a function's name, parameters and attributes from a parsed kernel (f->h is left alone). */
CUresult sim_func_init(struct sim_func *f, const struct sim_kernel_desc *k, int arch, int is_ptx);
void sim_func_fini(struct sim_func *f); /* frees what sim_func_init allocated */
/* Builds a module (functions in the order of d->kernels, globals with device memory) in ctx. */
CUresult sim_module_build(struct sim_ctx *ctx, const struct sim_image_desc *d, int is_ptx, struct sim_module **out);
struct sim_func *sim_module_func(const struct sim_module *m, size_t i); /* i-th function, NULL past the end */
CUresult sim_module_global(const struct sim_module *m, const char *name, CUdeviceptr *dptr, size_t *bytes);
/* A library-owned module tells its library when it goes (unloaded, or its context destroyed). */
void sim_module_set_library(struct sim_module *m, struct sim_library *lib);
void sim_library_module_gone(struct sim_library *lib, struct sim_module *m);
/* JIT options of cuModuleLoadDataEx / cuLibraryLoadData: validated, ignored (logged once), log buffers emptied. */
/* sim_memop.c: one operation checked (lock held), and a batch checked whole then run on stream s (takes the lock). */
CUresult sim_memop_check(const CUstreamBatchMemOpParams *p);
CUresult sim_memop_batch(CUstream s, unsigned int count, const CUstreamBatchMemOpParams *ops, unsigned int flags);
CUresult sim_jit_options(unsigned int n, CUjit_option *options, void **values);
/* After a module or library load with JIT options: its logs, their sizes and the wall time since t0 (sim_module.c). */
void sim_jit_load_outputs(unsigned int n, const CUjit_option *options, void **values, CUresult rc, uint64_t t0);
/* sim_link.c: the size option's value for log buffer option `log` (0 without one); write the logs, the bytes
 * written and the wall time into an option array (caps: the info and error buffers' sizes). */
size_t sim_jit_log_size(unsigned int n, const CUjit_option *opt, void **val, CUjit_option log);
void sim_jit_write_outputs(unsigned int n, const CUjit_option *opt, void **val, const char *info, const char *err,
                           float wall_ms, const size_t caps[2]);

/* A function handle, or a CUkernel passed where a CUfunction is accepted: the kernel's function in the current
 * context (its library is loaded there on first use). CUDA_ERROR_INVALID_HANDLE for anything else. */
CUresult sim_func_resolve(const void *handle, struct sim_func **out);
CUresult sim_func_get_attr(const struct sim_func *f, const struct sim_func_cfg *cfg, CUfunction_attribute a, int *pi);
CUresult sim_func_set_attr(const struct sim_func *f, struct sim_func_cfg *cfg, CUfunction_attribute a, int value);
CUresult sim_func_check_cache_config(CUfunc_cache config);
/* cuFuncGetParamInfo on f: the offset and size of parameter index (either out pointer may be NULL). */
CUresult sim_func_param_info(const struct sim_func *f, size_t index, size_t *offset, size_t *size);
void sim_func_cfg_default(const struct sim_func *f, struct sim_func_cfg *cfg);

/* ---- kernels the sim executes (sim_kernels.c) ---- */
struct sim_launch {
    const struct sim_func *f;
    unsigned int grid[3], block[3];
    unsigned int shmem;
    const unsigned char *params; /* packed parameter buffer, f->param_bytes long */
};
struct sim_kernel_impl {
    const char *name;
    uint32_t nparams;
    struct sim_param params[8];
    CUresult (*run)(const struct sim_launch *l);
};
const struct sim_kernel_impl *sim_kernel_lookup(const char *name, const struct sim_param *params, uint32_t n);
/* sim_graph_cond.c: a kernel's cudaGraphSetConditional. */
CUresult sim_graph_cond_set(CUgraphConditionalHandle h, unsigned int value);

/* ---- launches (sim_launch.c) ---- */
CUresult sim_launch(struct sim_func *fn, const unsigned int grid[3], const unsigned int block[3], unsigned int shmem,
                    CUstream stream, void **kernelParams, void **extra);

/* ---- launch log (sim_launch_log.c) ---- */
void sim_launch_log(const struct sim_launch *l, long long stream_id, CUresult result);

#endif
