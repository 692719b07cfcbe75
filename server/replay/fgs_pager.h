/* fgs_pager.h — the paging state a session's worker keeps, shared by the three files that page: paging.c (the
 * control lines, the ledger and the steps themselves), paging_pool.c (the route through the node's host page pool)
 * and paging_disk.c (the route through a spill file, over spill.c). Private to the replay engine. */
#ifndef FGS_PAGER_H
#define FGS_PAGER_H

#include <stdint.h>
#include <unistd.h>

#include "fgs_session.h"
#include "fgs_spill.h"

enum { RESIDENT = 0, PAGED_HOST = 1, PAGED_DISK = 2 };

typedef struct fgs_pager {
    int status_fd, ctl_fd;
    fgs_ledger *node; /* what this node lets be resident at once; NULL: no node accounting */
    int pool_fd; /* the host page pool as a memfd (-1: none, or slabs of driver memory) */
    int pool_vmm; /* the pool is slabs of host-NUMA driver memory (hostpool.c), an extent's mapped at vmm_va */
    int *slab_fds; /* its slabs' descriptors, n_slabs of slab bytes each */
    size_t n_slabs, slab;
    CUdeviceptr vmm_va;
    size_t vmm_slabs; /* how many slabs are mapped at vmm_va */
    size_t pool_len;
    uint8_t *map; /* the extent of the pool this session is paged to, mapped while it is used */
    size_t map_len;
    int where;
    uint64_t off, len, bytes; /* host extent, and bytes paged */
    char spill_path[512];
    void *bounce[2];
    CUstream stream;
    struct fgs_copiers *copiers; /* threads for the bounce buffer <-> pool copies */
    char line[1024];
    size_t have;
    int close_pending;
    char close_why[256];
    int deep; /* the agent may hold this process's CUDA state in a driver checkpoint: no CUDA call before "wake" */
    unsigned test_delay_ms; /* FARGPU_PAGING_TEST_DELAY_MS: fault-injection tests stretch each step with it */
    uint64_t io_ns, copy_ns; /* where the last step's time went (reported with it): I/O or pool copies, DMA */
    uint64_t map_ns, vmm_ns;  /* mapping the pool extent; releasing or re-creating the device memory */
} fgs_pager;

/* paging.c: a status line to the agent (nothing without a status descriptor), and the two pinned bounce buffers
 * and the copy stream, made on first use. */
void fgs_pager_say(fgs_pager *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
CUresult fgs_pager_bounce(fgs_session *S);

static inline void fgs_pager_test_delay(const fgs_pager *P) {
    if (P->test_delay_ms) usleep(P->test_delay_ms * 1000u);
}

/* paging_pool.c: the host-pool route. _out maps the extent [off, off+len) and copies the session's memory into it
 * (total bytes): 0, or -1 with the failure said to the agent and the extent unmapped. _in maps the extent again
 * where it is driver memory and copies it back. _unmap lets go of the extent; _copiers_free ends the copier threads. */
int fgs_pool_out(fgs_session *S, uint64_t off, uint64_t len, uint64_t total);
CUresult fgs_pool_in(fgs_session *S);
void fgs_pool_unmap(fgs_session *S);
void fgs_copiers_free(struct fgs_copiers *C);

/* paging_disk.c: the disk route. _out writes a new spill file at path: 0, or -1 with the failure said to the agent;
 * note gets the step's extra timings for the status line. _in reads the session's spill file back: a CUDA result,
 * with why set where the file itself failed. */
int fgs_disk_out(fgs_session *S, const char *path, char *note, size_t note_len);
CUresult fgs_disk_in(fgs_session *S, char *note, size_t note_len, char *why, size_t why_len);

#endif
