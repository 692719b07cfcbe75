/* fgs_spill.h — the disk half of paging (spill.c), as paging.c calls it: a paged session's memory in one spill file.
 * paging.c owns the pinned bounce buffers and the copy stream and lends them to each step; spill.c fills in where
 * the step's time went and, on failure, one line saying why. */
#ifndef FGS_SPILL_H
#define FGS_SPILL_H

#include <stdint.h>

#include "fgs_session.h"

#define FGS_BOUNCE (64u << 20) /* each of the worker's two pinned bounce buffers */

typedef struct fgs_spill_io {
    void *buf[2]; /* the two pinned bounce buffers, FGS_BOUNCE bytes each */
    CUstream stream;
    unsigned test_delay_ms; /* fault-injection tests: each allocation's copy takes this much longer */
    /* filled in by the step: */
    int direct;        /* 1: the file was read or written with O_DIRECT to the end */
    unsigned depth;    /* page-in: reads in flight at once */
    uint64_t chunk;    /* page-in: bytes per read */
    uint64_t open_ns;  /* opening (or creating) the file */
    uint64_t io_ns;    /* in read or write calls, summed over the reader threads */
    uint64_t copy_ns;  /* in device copies the I/O did not hide (page-out) or all device copies (page-in) */
    uint64_t wait_ns;  /* page-in: this thread waiting for a read to finish (the reading the pipeline did not hide) */
    uint64_t first_ns; /* page-in: from the first read issued until its data was in */
    uint64_t stream_ns; /* from the first I/O issued until the last byte was on the device (or in the file) */
    char why[240];     /* a failure: what happened, one line */
} fgs_spill_io;

/* Device → a new spill file at `path` (created exclusively); every allocation's page_off is set, one after the
 * other from 0. 0: written; -1: failed (why set), nothing released and the file removed. */
int fgs_spill_out(fgs_session *S, const char *path, fgs_spill_io *io);

/* Spill file → device, into allocations already mapped again at their addresses. The file stays (the node agent
 * deletes it, off the page-in's path). 0: every byte is back; -1: failed (why set), the file untouched. */
int fgs_spill_in(fgs_session *S, const char *path, fgs_spill_io *io);

#endif
