/* paging_disk.c — the disk route of paging, as paging.c's page-out and page-in steps call it: the session's memory
 * goes to a spill file in the node's spill directory and comes back from it. spill.c streams the file; this file
 * lends it the worker's pinned bounce buffers and copy stream for the step and turns its outcome into the step's
 * status: the timings it adds to the status line, and its reason when it failed. */
#include <stdio.h>
#include <string.h>

#include "fgs_pager.h"
#include "fgs_session.h"
#include "fgs_spill.h"

/* A step's I/O record, with the bounce buffers and the stream lent to it once they are there. */
static CUresult lend_bounce(fgs_session *S, fgs_spill_io *io) {
    fgs_pager *P = S->pager;
    memset(io, 0, sizeof *io);
    io->test_delay_ms = P->test_delay_ms;
    CUresult r = fgs_pager_bounce(S);
    if (r == CUDA_SUCCESS) {
        io->buf[0] = P->bounce[0];
        io->buf[1] = P->bounce[1];
        io->stream = P->stream;
    }
    return r;
}

int fgs_disk_out(fgs_session *S, const char *path, char *note, size_t note_len) {
    fgs_pager *P = S->pager;
    fgs_spill_io io;
    CUresult r = lend_bounce(S, &io);
    if (r == CUDA_SUCCESS && fgs_spill_out(S, path, &io) != 0) { /* spill.c removed the file */
        fgs_pager_say(P, "pageout-failed %s", io.why);
        return -1;
    }
    P->io_ns = io.io_ns;
    P->copy_ns = io.copy_ns;
    snprintf(note, note_len, " open_ns=%llu stream_ns=%llu direct=%d", (unsigned long long)io.open_ns,
             (unsigned long long)io.stream_ns, io.direct);
    snprintf(P->spill_path, sizeof P->spill_path, "%s", path);
    if (r != CUDA_SUCCESS) { /* nothing was released: the session stays as it was */
        fgs_pager_say(P, "pageout-failed copying out failed with CUDA error %d", (int)r);
        return -1;
    }
    return 0;
}

/* The spill file stays: the node agent deletes it once it hears "resident", off this call's path (spill.c says
 * why). A failure leaves it as it was, and the session paged. */
CUresult fgs_disk_in(fgs_session *S, char *note, size_t note_len, char *why, size_t why_len) {
    fgs_pager *P = S->pager;
    fgs_spill_io io;
    CUresult r = lend_bounce(S, &io);
    if (r == CUDA_SUCCESS && fgs_spill_in(S, P->spill_path, &io) != 0) {
        snprintf(why, why_len, "%s", io.why);
        r = CUDA_ERROR_OPERATING_SYSTEM;
    }
    P->io_ns = io.io_ns;
    P->copy_ns = io.copy_ns;
    snprintf(note, note_len, " open_ns=%llu first_ns=%llu wait_ns=%llu stream_ns=%llu depth=%u chunk=%llu direct=%d",
             (unsigned long long)io.open_ns, (unsigned long long)io.first_ns, (unsigned long long)io.wait_ns,
             (unsigned long long)io.stream_ns, io.depth, (unsigned long long)io.chunk, io.direct);
    return r;
}

/* A restored session's memory in a spill file (park.c): paged to disk, paged in by its first batch. */
int fgs_pager_adopt_spill(fgs_session *S, const char *path, uint64_t bytes) {
    fgs_pager *P = S->pager;
    if (!P || P->where != RESIDENT || strlen(path) >= sizeof P->spill_path) return -1;
    snprintf(P->spill_path, sizeof P->spill_path, "%s", path);
    P->where = PAGED_DISK;
    P->bytes = bytes;
    return 0;
}
