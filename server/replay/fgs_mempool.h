/* fgs_mempool.h — what the parts of the stream-ordered allocator share (one worker process serves one session, so
 * the state is the files'): mempool.c keeps the pools (virtual ids, current and default pools, attributes, access,
 * the pool calls), mempool_blocks.c what they hold (whole allocations, small ones carved out of shared chunks,
 * frees waiting for their stream, parking), mempool_capture.c allocations on a stream under capture (graph
 * allocations). All work over the session's own allocations (memory.c), never the driver's pools. */
#ifndef FGS_MEMPOOL_H
#define FGS_MEMPOOL_H

#include "fgs_session.h"

#define MP_MAX_DEV 64
#define MP_N_REUSE 3
#define MP_UNIT 512u          /* small allocations are carved out of chunks in units of this many bytes */
#define MP_SMALL (1u << 20)   /* requests up to this size share chunks */
#define MP_CHUNK (2u << 20)   /* a chunk: one session allocation of this size (rounded to the granularity) */

typedef struct mp_pool {
    uint64_t id; /* the virtual id once handed out; 0: none yet (or destroyed) */
    int dev;
    int is_default;
    int destroyed;     /* the client destroyed it: it goes with the last thing it holds */
    uint64_t max_size; /* 0: no cap */
    int reuse[MP_N_REUSE];
    uint64_t threshold; /* RELEASE_THRESHOLD: empty chunks are kept while the pool holds no more than this */
    uint64_t used, reserved, used_high, reserved_high;
    size_t n_held; /* whole allocations and chunks it holds */
    uint8_t access[MP_MAX_DEV]; /* CUmemAccess_flags of other devices (cuMemPoolSetAccess); its own: read-write */
} mp_pool;

typedef struct mp_chunk {
    CUdeviceptr ptr;
    size_t mapped;
    mp_pool *pool;
    uint64_t *bits; /* one per MP_UNIT: taken */
    size_t n_units, used_units;
} mp_chunk;

typedef struct {
    CUdeviceptr ptr;
    uint64_t req;    /* as requested */
    size_t bytes;    /* what it counts: the mapped size (whole) or its units (a block of a chunk) */
    mp_pool *pool;   /* NULL: a cuMemAlloc allocation freed with cuMemFreeAsync */
    mp_chunk *chunk; /* non-NULL: a block of this chunk, starting at unit `first` */
    size_t first;
    int pending;     /* freed with cuMemFreeAsync, not yet released */
    CUevent ev;      /* completes when the free is reached on its stream; NULL: nothing left to wait for */
    CUstream stream;
} mp_alloc;

extern mp_pool **mp_pools; /* created pools, destroyed ones included until they go */
extern size_t mp_n_pools;
extern mp_pool *mp_defaults[MP_MAX_DEV];

int mp_grow(void **v, size_t *cap, size_t n, size_t size);
CUresult mp_refuse(fgs_session *S, const char *what); /* CUDA_ERROR_NOT_SUPPORTED, logged once per `what` literal */
CUresult mp_check_dev(fgs_session *S, int dev);
mp_pool *mp_default_pool(int dev);
mp_pool *mp_new_pool(int dev, int is_default);
mp_pool *mp_pool_of(fgs_session *S, uint64_t id); /* NULL: not a live pool id of this session */
mp_pool *mp_current(int dev);                       /* the current pool of a device (cuMemAllocAsync) */
void mp_pool_free(mp_pool *p);                     /* a destroyed pool that holds nothing any more */
mp_pool *mp_add_destroyed(int dev);                /* restoring: a destroyed pool that still held memory */

/* mempool_blocks.c */
CUresult mp_alloc_ptr(fgs_session *S, mp_pool *p, uint64_t size, CUdeviceptr *out);
void mp_release_ptr(fgs_session *S, CUdeviceptr ptr); /* a block just handed out goes back */

/* mempool_capture.c: an allocation on a stream under capture (a graph allocation); the reply as alloc_on's. */
CUresult mp_captured_alloc(fgs_session *S, mp_pool *p, CUstream s, uint64_t size, fg_writer *out);
void mp_reap(fgs_session *S, int wait_all, int wait_stream, CUstream stream);
void mp_trim(fgs_session *S, mp_pool *p, uint64_t keep); /* empty chunks go while p holds more than keep */
void mp_access_changed(fgs_session *S, mp_pool *p, int dev);
void mp_destroyed(fgs_session *S, mp_pool *p); /* its empty chunks go; the pool itself once it holds nothing */
void mp_blocks_close(fgs_session *S);

#endif
