/* fgc_mirror_impl.h — the mirror table shared by mirror.c (the coherence engine) and managed.c (the managed and
 * mapped memory calls). */
#ifndef FGC_MIRROR_IMPL_H
#define FGC_MIRROR_IMPL_H

#include <pthread.h>
#include <stdatomic.h>

#include "fgc_mirror.h"

#define FGC_MIRROR_MAX 4096
enum { FGC_MIRROR_MANAGED = 1, FGC_MIRROR_MAPPED = 2 };

typedef struct {
    atomic_int live;
    int kind;
    int attach_host;   /* CU_MEM_ATTACH_HOST: device work leaves it alone */
    uintptr_t host;    /* page-aligned */
    uint64_t dev;      /* device address of host[0] */
    size_t span;       /* bytes, page multiple */
    size_t nblk;
    uint8_t *st;       /* per 64 KiB block: stale, clean, dirty */
    size_t n_valid, n_dirty;
    uint64_t user;     /* what the application was given (managed: == dev; mapped: its host pointer) */
    size_t user_size;
    int mapped_alloc;  /* mapped: the stub's own pinned allocation (cuMemHostAlloc), else registered memory */
    /* cuMemAdvise and cuMemPrefetchAsync, answered back by cuMemRangeGetAttribute */
    int read_mostly, preferred, last_prefetch;
    uint32_t accessed_by; /* bit 0: the CPU, bit 1 + d: device d */
} fgc_mirror;

extern fgc_mirror g_mirrors[FGC_MIRROR_MAX];
extern pthread_mutex_t g_mirror_mu;

fgc_mirror *fgc_mirror_add(uintptr_t host, uint64_t dev, size_t span, int kind);
void fgc_mirror_remove(fgc_mirror *m, int keep_host);
fgc_mirror *fgc_mirror_find_host(uintptr_t a);
fgc_mirror *fgc_mirror_find_dev(uint64_t d);
void fgc_mirror_set_attach_host(fgc_mirror *m, int host); /* mirror mutex held */
/* Flush every dirty block to the device; with make_stale, then mark every mirror stale. */
void fgc_mirror_sync_all(int make_stale);

#endif
