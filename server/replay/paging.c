/* paging.c — an idle session gives its GPU memory back and gets it again at the same addresses.
 *
 * Page-out (a "pageout" control line from the node agent, between batches): every context is synchronised
 * (streams drained, host functions run, staged async device→host copies complete and stay staged for the next
 * reply), every allocation is copied to the page store, and only when every copy succeeded is its physical memory
 * unmapped and released. The VA reservations stay, so every pointer the application holds stays valid. A failed
 * page-out releases nothing: the session stays resident and working.
 *
 * The page store is either an extent of the node's host page pool (a memfd the agent shares with every worker, its
 * pages allocated up front; or, on a GPU, slabs of host-NUMA driver memory: hostpool.c), the route in
 * paging_pool.c, or a spill file in the node's spill directory, the route in paging_disk.c; this file keeps what
 * both share: the control lines, the resident ledger, and the steps around the copies. Both go through the
 * worker's two pinned bounce buffers, so the device's copies run at DMA speed: to the pool, the DMA of one chunk
 * overlaps the copy of the one before into the pool by several threads (registering pool extents with the driver
 * instead cost more than the copy: 6.7 GB/s on an H100); to and from disk, spill.c streams the file with large
 * aligned O_DIRECT I/O that overlaps the device copies. The agent owns both: it frees a pool extent and deletes a
 * spill file when the session pages in or its worker exits, however it exits.
 *
 * Page-in (the session's next batch, or a "pagein" line): the memory must fit the node's resident ledger; if it
 * does not, the worker asks the agent ("need BYTES") to make room, and waits (bounded) for "grant" or "deny".
 * Then each allocation is created again, mapped at its old address and filled from the store; any failure undoes
 * what this attempt mapped and leaves the session paged, so it is never resumed with wrong memory. The batch that
 * needed the GPU then fails with CUDA_ERROR_OUT_OF_MEMORY and a later one tries again.
 *
 * Status lines to the agent: "paged host|disk BYTES NS UNPAGEABLE io_ns=.. copy_ns=.. map_ns=.. vmm_ns=..",
 * "pageout-failed REASON", "paging-in BYTES", "resident BYTES NS io_ns=.. copy_ns=.. vmm_ns=..", "pagein-failed REASON",
 * "need BYTES"; a disk step adds its phases (open_ns, first_ns, wait_ns, stream_ns, depth, chunk, direct: spill.c). */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fgs_pager.h"
#include "fgs_public.h"
#include "fgs_session.h"
#include "fgs_spill.h"

#define NEED_WAIT_MS 60000 /* how long a page-in or allocation waits for the agent to make room */

uint64_t fgs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void fgs_pager_say(fgs_pager *P, const char *fmt, ...) {
    if (!P || P->status_fd < 0) return;
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w;
    do w = write(P->status_fd, buf, (size_t)n); /* one write: lines under PIPE_BUF never interleave */
    while (w < 0 && errno == EINTR);
}

FGS_EXPORT int fgs_set_pager(fgs_session *S, int status_fd, int pool_fd, int node_fd, unsigned int node_slot) {
    if (!S || S->pager) return -1;
    fgs_pager *P = (fgs_pager *)calloc(1, sizeof *P);
    if (!P) return -1;
    P->status_fd = status_fd;
    P->ctl_fd = -1;
    if (node_fd >= 0 && !(P->node = fgs_ledger_open(node_fd, node_slot))) {
        free(P);
        return -1;
    }
    struct stat st;
    P->pool_fd = -1;
    if (pool_fd >= 0 && fstat(pool_fd, &st) == 0 && st.st_size > 0) {
        P->pool_fd = pool_fd;
        P->pool_len = (size_t)st.st_size;
    } else if (pool_fd >= 0) {
        close(pool_fd);
    }
    const char *delay = getenv("FARGPU_PAGING_TEST_DELAY_MS");
    if (delay) P->test_delay_ms = (unsigned)strtoul(delay, NULL, 10);
    S->pager = P;
    S->last_active_ns = fgs_now_ns();
    return 0;
}

void fgs_pager_attach_ctl(fgs_session *S, int ctl_fd) {
    if (S->pager) S->pager->ctl_fd = ctl_fd;
}

int fgs_is_paged(const fgs_session *S) { return S->pager && S->pager->where != RESIDENT; }

FGS_EXPORT int fgs_paging_state(fgs_session *S) { return S && S->pager ? S->pager->where : 0; }

FGS_EXPORT unsigned long long fgs_paged_bytes(fgs_session *S) {
    return S && S->pager && S->pager->where != RESIDENT ? S->pager->bytes : 0;
}

FGS_EXPORT unsigned long long fgs_idle_ms(fgs_session *S) {
    uint64_t t = fgs_now_ns();
    return S && S->last_active_ns && t > S->last_active_ns ? (t - S->last_active_ns) / 1000000ull : 0;
}

/* ---- the node's resident ledger ---- */

static int wait_for_room(fgs_session *S, uint64_t bytes);

CUresult fgs_resident_charge(fgs_session *S, uint64_t bytes) {
    fgs_pager *P = S->pager;
    if (!P || !P->node) return CUDA_SUCCESS;
    uint64_t deadline = fgs_now_ns() + (uint64_t)NEED_WAIT_MS * 1000000ull;
    while (fgs_ledger_try_charge(P->node, bytes) != 0) {
        if (fgs_now_ns() >= deadline || wait_for_room(S, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

void fgs_resident_uncharge(fgs_session *S, uint64_t bytes) {
    if (S->pager && S->pager->node) fgs_ledger_uncharge(S->pager->node, bytes);
}

/* ---- control lines ---- */

static void page_out(fgs_session *S, const char *args);

/* Reads what the agent wrote; handles whole lines. Returns 1 when the session must close. */
FGS_EXPORT int fgs_control_read(fgs_session *S, int ctl_fd, char *why, unsigned long why_len) {
    fgs_pager tmp;
    fgs_pager *P = S->pager ? S->pager : &tmp;
    if (!S->pager) {
        memset(&tmp, 0, sizeof tmp);
        tmp.status_fd = -1;
    }
    P->ctl_fd = ctl_fd;
    ssize_t k = read(ctl_fd, P->line + P->have, sizeof P->line - 1 - P->have);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
    if (k <= 0) { /* the agent is gone */
        snprintf(why, why_len, "the session was ended by the node server");
        return 1;
    }
    P->have += (size_t)k;
    P->line[P->have] = 0;
    int closing = 0;
    char *nl;
    while ((nl = memchr(P->line, '\n', P->have)) != NULL) {
        /* Take the line out of the buffer before acting on it: a step it starts may wait for the agent's answer
         * (page-in: "wake", "need"), and that wait reads further lines into the same buffer. */
        char cmd[sizeof P->line];
        size_t used = (size_t)(nl - P->line) + 1;
        memcpy(cmd, P->line, used - 1);
        cmd[used - 1] = 0;
        memmove(P->line, nl + 1, P->have - used);
        P->have -= used;
        P->line[P->have] = 0;
        if (!closing && fgs_control_line(S, cmd, why, why_len)) closing = 1;
    }
    if (P->have == sizeof P->line - 1) P->have = 0; /* a line too long: drop it */
    return closing;
}

int fgs_control_line(fgs_session *S, const char *line, char *why, size_t why_len) {
    if (!strncmp(line, "close", 5)) {
        const char *r = line[5] == ' ' ? line + 6 : "the session was ended by the node server";
        snprintf(why, why_len, "%s", r);
        return 1;
    }
    if (!strncmp(line, "pageout ", 8)) {
        page_out(S, line + 8);
    } else if (!strncmp(line, "park", 4)) { /* park.c: write the session's state, then wait for the verdict */
        return fgs_park_control(S, line, why, why_len);
    } else if (!strcmp(line, "deep")) {
        /* The deeper level: the agent checkpoints this process with the driver's process checkpoint after this
         * answer, which frees what the VMM route cannot (context, module code, globals). From here on every CUDA
         * call waits for the agent to restore it (fgs_pager_wake). Only a paged session goes deeper. */
        if (S->pager && S->pager->where != RESIDENT) {
            S->pager->deep = 1;
            fgs_pager_say(S->pager, "deep-ok");
        } else if (S->pager) {
            fgs_pager_say(S->pager, "deep-failed the session is resident");
        }
    } else if (!strcmp(line, "pagein")) {
        if (fgs_is_paged(S)) fgs_page_in(S);
    } else if (!strncmp(line, "grant", 5) || !strncmp(line, "deny", 4)) {
        /* an answer that came after its wait gave up: nothing waits for it now */
    } else {
        fgs_log(S, "ignoring an unknown control line from the node agent");
    }
    return 0;
}

/* Sends the agent a request and waits for its answer ("grant" or "deny"). 0: granted, -1: denied, timed out or the
 * session is closing. */
static int ask_agent(fgs_session *S, const char *request) {
    fgs_pager *P = S->pager;
    if (P->ctl_fd < 0 || P->close_pending) return -1;
    fgs_pager_say(P, "%s", request);
    uint64_t deadline = fgs_now_ns() + (uint64_t)NEED_WAIT_MS * 1000000ull;
    for (;;) {
        char *nl;
        while ((nl = memchr(P->line, '\n', P->have)) != NULL) {
            *nl = 0;
            int verdict = 0;
            if (!strncmp(P->line, "grant", 5)) verdict = 1;
            else if (!strncmp(P->line, "deny", 4)) verdict = -1;
            else if (!strncmp(P->line, "close", 5)) {
                P->close_pending = 1;
                snprintf(P->close_why, sizeof P->close_why, "%s", P->line[5] == ' ' ? P->line + 6 : "ended");
                verdict = -1;
            } else if (!strncmp(P->line, "pageout ", 8)) {
                fgs_pager_say(P, "pageout-failed the session is busy");
            }
            size_t used = (size_t)(nl - P->line) + 1;
            memmove(P->line, nl + 1, P->have - used);
            P->have -= used;
            P->line[P->have] = 0;
            if (verdict) return verdict > 0 ? 0 : -1;
        }
        uint64_t t = fgs_now_ns();
        if (t >= deadline) return -1;
        struct pollfd pf = {P->ctl_fd, POLLIN, 0};
        int np = poll(&pf, 1, (int)((deadline - t) / 1000000ull) + 1);
        if (np < 0 && errno == EINTR) continue;
        if (np <= 0) return -1;
        ssize_t k = read(P->ctl_fd, P->line + P->have, sizeof P->line - 1 - P->have);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            P->close_pending = 1;
            snprintf(P->close_why, sizeof P->close_why, "the session was ended by the node server");
            return -1;
        }
        P->have += (size_t)k;
        P->line[P->have] = 0;
        if (P->have == sizeof P->line - 1) P->have = 0;
    }
}

/* Asks the agent for room on the GPU and waits for its answer. 0: granted (try again), -1: denied. */
static int wait_for_room(fgs_session *S, uint64_t bytes) {
    char req[64];
    snprintf(req, sizeof req, "need %llu", (unsigned long long)bytes);
    return ask_agent(S, req);
}

int fgs_pager_wake(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (!P || !P->deep) return 0;
    int closing = P->close_pending;
    P->close_pending = 0; /* the restore is needed to close cleanly too */
    int r = ask_agent(S, "wake");
    P->close_pending = P->close_pending || closing;
    if (r == 0) P->deep = 0;
    return r;
}

FGS_EXPORT int fgs_close_pending(fgs_session *S, char *why, unsigned long why_len) {
    if (!S->pager || !S->pager->close_pending) return 0;
    snprintf(why, why_len, "%s", S->pager->close_why);
    return 1;
}

/* ---- copies to and from the store ---- */

static CUresult sync_all_contexts(fgs_session *S) {
    CUcontext cur = NULL;
    S->api->cuCtxGetCurrent(&cur);
    CUresult res = CUDA_SUCCESS;
    fgs_table *t = &S->tables[FGH_CONTEXT];
    for (uint32_t i = 0; i < t->n && res == CUDA_SUCCESS; i++) {
        if (!t->real[i]) continue;
        res = S->api->cuCtxSetCurrent((CUcontext)t->real[i]);
        if (res == CUDA_SUCCESS) res = S->api->cuCtxSynchronize();
    }
    S->api->cuCtxSetCurrent(cur);
    return res;
}

CUresult fgs_pager_bounce(fgs_session *S) {
    fgs_pager *P = S->pager;
    for (int i = 0; i < 2; i++) {
        if (P->bounce[i]) continue;
        CUresult r = S->api->cuMemHostAlloc(&P->bounce[i], FGS_BOUNCE, 0);
        if (r != CUDA_SUCCESS) return r;
    }
    if (!P->stream) return S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
    return CUDA_SUCCESS;
}

static uint64_t unpageable_bytes(fgs_session *S) {
    uint64_t n = (uint64_t)(S->n_created_ctx + S->n_green) * S->ctx_charge;
    for (size_t i = 0; i < S->n_globals; i++) n += S->globals[i].size;
    return n;
}

static void page_out(fgs_session *S, const char *args) {
    fgs_pager *P = S->pager;
    if (!P) return;
    if (P->where != RESIDENT) {
        fgs_pager_say(P, "pageout-failed the session is already paged out");
        return;
    }
    if (fgs_ipc_active(S)) { /* another process maps some of its memory, and would not follow it */
        fgs_pager_say(P, "pageout-failed the session shares device memory with another process (CUDA IPC)");
        return;
    }
    uint64_t t0 = fgs_now_ns(), total = 0;
    for (size_t i = 0; i < S->n_allocs; i++) total += S->allocs[i].mapped;
    unsigned long long off = 0, len = 0;
    char path[512] = "";
    int host = sscanf(args, "host %llu %llu", &off, &len) == 2;
    int disk = !host && sscanf(args, "disk %511s", path) == 1;
    if (!host && !disk) {
        fgs_pager_say(P, "pageout-failed malformed request");
        return;
    }
    if (host && ((P->pool_fd < 0 && !P->pool_vmm) || off > P->pool_len || len > P->pool_len - off || len < total)) {
        fgs_pager_say(P, "pageout-failed the host pool extent does not hold %llu bytes", (unsigned long long)total);
        return;
    }
    P->io_ns = P->copy_ns = P->map_ns = P->vmm_ns = 0;
    CUresult r = sync_all_contexts(S);
    if (r != CUDA_SUCCESS) {
        fgs_pager_say(P, "pageout-failed synchronising the session failed with CUDA error %d", (int)r);
        return;
    }
    char disk_note[160] = ""; /* a disk step's extra timings, for the status line */
    if (host ? fgs_pool_out(S, off, len, total) : fgs_disk_out(S, path, disk_note, sizeof disk_note))
        return; /* nothing was released: the session stays as it was */
    uint64_t tv = fgs_now_ns();
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        S->api->cuMemUnmap(a->ptr, a->mapped);
        S->api->cuMemRelease(a->handle);
        a->handle = 0;
        a->paged = 1;
    }
    P->vmm_ns = fgs_now_ns() - tv;
    if (P->node) fgs_ledger_uncharge(P->node, total);
    P->where = host ? PAGED_HOST : PAGED_DISK;
    P->bytes = total;
    if (host && P->pool_vmm) fgs_pool_unmap(S); /* mapped again by the page-in; meanwhile the worker holds none of it */
    fgs_stage_trim(S); /* nor does it keep idle page-locked staging buffers (made again at the next copies) */
    fgs_pager_say(P, "paged %s %llu %llu %llu io_ns=%llu copy_ns=%llu map_ns=%llu vmm_ns=%llu%s",
                  host ? "host" : "disk", (unsigned long long)total, (unsigned long long)(fgs_now_ns() - t0),
                  (unsigned long long)unpageable_bytes(S), (unsigned long long)P->io_ns, (unsigned long long)P->copy_ns,
                  (unsigned long long)P->map_ns, (unsigned long long)P->vmm_ns, disk_note);
}

/* Undoes what a failed page-in mapped; the contents stay in the store. */
static void unmap_again(fgs_session *S) {
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (!a->paged || !a->handle) continue;
        S->api->cuMemUnmap(a->ptr, a->mapped);
        S->api->cuMemRelease(a->handle);
        a->handle = 0;
    }
}

CUresult fgs_page_in(fgs_session *S) {
    fgs_pager *P = S->pager;
    uint64_t t0 = fgs_now_ns();
    if (fgs_pager_wake(S) != 0) {
        fgs_pager_say(P, "pagein-failed the driver checkpoint of this session could not be restored");
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fgs_pager_say(P, "paging-in %llu", (unsigned long long)P->bytes);
    P->io_ns = P->copy_ns = P->vmm_ns = 0;
    if (P->node && fgs_resident_charge(S, P->bytes) != CUDA_SUCCESS) {
        fgs_pager_say(P, "pagein-failed no room on the GPU for %llu bytes", (unsigned long long)P->bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = CUDA_SUCCESS;
    uint64_t tv = fgs_now_ns();
    for (size_t i = 0; i < S->n_allocs && r == CUDA_SUCCESS; i++) {
        fgs_alloc *a = &S->allocs[i];
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = a->dev;
        prop.requestedHandleTypes = a->client_vmm ? CU_MEM_HANDLE_TYPE_NONE : CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        r = S->api->cuMemCreate(&a->handle, a->mapped, &prop, 0); /* shareable again, as memory.c made it (ipc.c) */
        if (r == CUDA_ERROR_NOT_SUPPORTED || r == CUDA_ERROR_INVALID_VALUE || r == CUDA_ERROR_NOT_PERMITTED) {
            prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
            r = S->api->cuMemCreate(&a->handle, a->mapped, &prop, 0);
        }
        if (r != CUDA_SUCCESS) {
            a->handle = 0;
            break;
        }
        r = S->api->cuMemMap(a->ptr, a->mapped, 0, a->handle, 0);
        if (r != CUDA_SUCCESS) {
            S->api->cuMemRelease(a->handle);
            a->handle = 0;
            break;
        }
        CUmemAccessDesc ad;
        memset(&ad, 0, sizeof ad);
        ad.location = prop.location;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = S->api->cuMemSetAccess(a->ptr, a->mapped, &ad, 1);
        if (r == CUDA_SUCCESS && a->peers) fgs_peer_grant(S, a); /* the session's other GPUs that reached it */
    }
    P->vmm_ns = fgs_now_ns() - tv;
    if (r == CUDA_SUCCESS && P->where == PAGED_HOST) r = fgs_pool_in(S);
    char disk_note[200] = "", disk_why[240] = "";
    if (r == CUDA_SUCCESS && P->where == PAGED_DISK)
        r = fgs_disk_in(S, disk_note, sizeof disk_note, disk_why, sizeof disk_why);
    if (r != CUDA_SUCCESS) {
        unmap_again(S);
        if (P->node) fgs_ledger_uncharge(P->node, P->bytes);
        if (disk_why[0])
            fgs_pager_say(P, "pagein-failed %s", disk_why);
        else
            fgs_pager_say(P, "pagein-failed restoring the memory failed with CUDA error %d", (int)r);
        return r == CUDA_ERROR_OUT_OF_MEMORY ? r : CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < S->n_allocs; i++) S->allocs[i].paged = 0;
    fgs_pool_unmap(S);
    P->where = RESIDENT;
    fgs_pager_say(P, "resident %llu %llu io_ns=%llu copy_ns=%llu vmm_ns=%llu%s", (unsigned long long)P->bytes,
                  (unsigned long long)(fgs_now_ns() - t0), (unsigned long long)P->io_ns,
                  (unsigned long long)P->copy_ns, (unsigned long long)P->vmm_ns, disk_note);
    P->bytes = 0;
    return CUDA_SUCCESS;
}

/* For park.c: the agent's control descriptor (a park waits on it for its verdict) and a status line. A restored
 * session's memory, paged until its first batch pages it in at the same addresses, is adopted by the route that
 * holds it (fgs_pager_adopt_host in paging_pool.c, fgs_pager_adopt_spill in paging_disk.c). */
int fgs_pager_ctl_fd(fgs_session *S) { return S->pager ? S->pager->ctl_fd : -1; }

void fgs_pager_status(fgs_session *S, const char *line) { fgs_pager_say(S->pager, "%s", line); }

void fgs_pager_close(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (!P) return;
    if (P->where == PAGED_DISK) unlink(P->spill_path);
    fgs_copiers_free(P->copiers);
    for (int i = 0; i < 2; i++)
        if (P->bounce[i]) S->api->cuMemFreeHost(P->bounce[i]);
    fgs_pool_unmap(S);
    if (P->pool_fd >= 0) close(P->pool_fd);
    for (size_t i = 0; i < P->n_slabs; i++) close(P->slab_fds[i]);
    free(P->slab_fds);
    fgs_ledger_free(P->node);
    free(P);
    S->pager = NULL;
}
