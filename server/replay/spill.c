/* spill.c — the disk half of paging: a paged session's memory as one spill file in the node's spill directory.
 *
 * Layout: each allocation's bytes at its page_off, one allocation after the other from offset 0 (the layout the
 * node agent parks and restores too). Page-out streams the allocations through the worker's two pinned bounce
 * buffers: the device copies fill one (several small allocations share a buffer, so the disk always gets large
 * writes) while the other is written with one aligned write. Page-in reads the file front to back in fixed chunks
 * into slots carved from the same two buffers, with several reads in flight on reader threads
 * (FARGPU_SPILL_READ_DEPTH, default 2; FARGPU_SPILL_CHUNK_MB, default 32), while this thread copies each chunk that
 * is in to the allocations it covers. The file is read as one stream whatever the allocations: nothing drains at an
 * allocation's end, and a session of many small allocations reads as fast as one of a few large ones.
 *
 * O_DIRECT where the filesystem allows it (no page cache: a spilled session does not crowd the node's memory, and a
 * page-in reads the disk, as the bench's yardstick does). I/O lengths are rounded up to 4 KiB (the last write is
 * padded with zeros; a file that ends early at the end is read as far as it goes). A filesystem that refuses
 * O_DIRECT (ramfs, some network or FUSE filesystems) at open or at the first I/O is used through the page cache
 * instead, and the worker logs it once. A file whose pages are mostly in the page cache already (a restored session's
 * memory, read by the node agent to check it) is read through the cache.
 *
 * What this file does not do: delete the spill file after a page-in. The node agent does that (server/pager.py),
 * off the page-in's path: on a filesystem mounted with online discard (ext4 `-o discard` on the H100 host and on
 * the CI machines) unlinking a spilled file costs about 0.13 s per GiB, a quarter of reading it back, and it made
 * page-in from disk reach only 0.71-0.88x the disk's raw read speed on the H100. A failed page-in leaves the file
 * as it was, so the session stays paged and a later call tries again. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fgs_spill.h"

#define IO_ALIGN 4096u   /* O_DIRECT: offsets, lengths and buffers in multiples of the logical block size */
#define MAX_DEPTH 8u

static uint64_t round_up(uint64_t n) { return (n + IO_ALIGN - 1) / IO_ALIGN * IO_ALIGN; }

/* Logged once per worker: which filesystem made the spill file go through the page cache. */
static void note_buffered(fgs_session *S, const char *path, const char *when) {
    static int logged;
    if (logged) return;
    logged = 1;
    fgs_log(S, "the spill file %s refused O_DIRECT (%s); spilling through the page cache instead (slower and it "
            "uses the node's memory; put --spill-dir on a local disk filesystem such as ext4 or xfs)", path, when);
}

/* O_DIRECT where the filesystem takes it (EINVAL at open: it does not), else buffered. */
static int open_spill(fgs_session *S, const char *path, int flags, int *direct) {
    int fd = open(path, flags | O_CLOEXEC | O_DIRECT, 0600);
    *direct = fd >= 0;
    if (fd < 0 && errno == EINVAL) {
        /* Creating: the kernel made the file before it refused O_DIRECT (an O_EXCL open of a file that was already
         * there fails with EEXIST first), so it is ours to remove before trying again. */
        if (flags & O_CREAT) unlink(path);
        fd = open(path, flags | O_CLOEXEC, 0600);
        if (fd >= 0) note_buffered(S, path, "at open");
    }
    return fd;
}

/* Whether most of the file's pages are in the page cache (sampled with mincore, at most 4096 pages looked at): a
 * restored session's memory, which the node agent just read to check it against the park store's checksums
 * (server/park/directory.py links the parked object as the spill file), reads faster through the cache than again
 * from the disk. */
static int mostly_cached(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    long page = sysconf(_SC_PAGESIZE);
    int cached = 0;
    if (fstat(fd, &st) == 0 && st.st_size > 0 && page > 0) {
        size_t len = (size_t)st.st_size, pages = (len + (size_t)page - 1) / (size_t)page;
        void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
        unsigned char *vec = m != MAP_FAILED ? (unsigned char *)malloc(pages) : NULL;
        if (vec && mincore(m, len, vec) == 0) {
            size_t step = pages > 4096 ? pages / 4096 : 1, in = 0, seen = 0;
            for (size_t i = 0; i < pages; i += step, seen++) in += vec[i] & 1;
            cached = in * 10 >= seen * 9;
        }
        free(vec);
        if (m != MAP_FAILED) munmap(m, len);
    }
    close(fd);
    return cached;
}

/* Turns O_DIRECT off on an open file whose filesystem refused an O_DIRECT read or write with EINVAL. */
static int drop_direct(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl & ~O_DIRECT);
}

static void delay(const fgs_spill_io *io) {
    if (io->test_delay_ms) usleep(io->test_delay_ms * 1000u);
}

/* ---- page-out ---- */

/* Writes n bytes at off; an EINVAL under O_DIRECT drops to buffered I/O once. 0 or an errno. */
static int write_at(int fd, int *direct, int *dropped, const uint8_t *p, size_t n, uint64_t off) {
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && errno == EINVAL && *direct) {
            if (drop_direct(fd) != 0) return EINVAL;
            *direct = 0;
            *dropped = 1;
            continue;
        }
        if (k < 0) return errno;
        if (k == 0) return EIO;
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

int fgs_spill_out(fgs_session *S, const char *path, fgs_spill_io *io) {
    io->why[0] = 0;
    io->io_ns = io->copy_ns = io->wait_ns = io->first_ns = io->stream_ns = 0;
    io->depth = 1;
    io->chunk = FGS_BOUNCE;
    uint64_t t0 = fgs_now_ns();
    int fd = open_spill(S, path, O_WRONLY | O_CREAT | O_EXCL, &io->direct);
    io->open_ns = fgs_now_ns() - t0;
    if (fd < 0) {
        snprintf(io->why, sizeof io->why, "cannot create the spill file: %s", strerror(errno));
        return -1;
    }
    int dropped = 0, err = 0, cur = 0;
    CUresult r = CUDA_SUCCESS;
    uint64_t pos = 0, buf_start = 0, pend_off = 0; /* pos: logical bytes placed; buf_start: where buf[cur] goes */
    size_t fill = 0, pending = 0;                  /* bytes in buf[cur]; bytes in buf[cur ^ 1] still to write */
    uint64_t ts = fgs_now_ns();
    for (size_t i = 0; i < S->n_allocs && r == CUDA_SUCCESS && !err; i++) {
        fgs_alloc *a = &S->allocs[i];
        a->page_off = pos;
        delay(io);
        for (size_t done = 0; done < a->mapped && r == CUDA_SUCCESS && !err;) {
            size_t take = a->mapped - done < FGS_BOUNCE - fill ? a->mapped - done : FGS_BOUNCE - fill;
            r = S->api->cuMemcpyDtoHAsync_v2((uint8_t *)io->buf[cur] + fill, a->ptr + done, take, io->stream);
            if (r != CUDA_SUCCESS) break;
            fill += take;
            done += take;
            pos += take;
            if (fill < FGS_BOUNCE) continue;
            /* buf[cur] is filling from the device: write the other one meanwhile. */
            uint64_t t1 = fgs_now_ns();
            if (pending) err = write_at(fd, &io->direct, &dropped, io->buf[cur ^ 1], pending, pend_off);
            uint64_t t2 = fgs_now_ns();
            r = S->api->cuStreamSynchronize(io->stream);
            io->io_ns += t2 - t1;
            io->copy_ns += fgs_now_ns() - t2; /* the part of the copy the write did not hide */
            pending = fill;
            pend_off = buf_start;
            buf_start += fill;
            fill = 0;
            cur ^= 1;
        }
    }
    if (r == CUDA_SUCCESS && !err && fill) { /* the last, partly filled buffer */
        uint64_t t1 = fgs_now_ns();
        if (pending) err = write_at(fd, &io->direct, &dropped, io->buf[cur ^ 1], pending, pend_off);
        uint64_t t2 = fgs_now_ns();
        r = S->api->cuStreamSynchronize(io->stream);
        io->io_ns += t2 - t1;
        io->copy_ns += fgs_now_ns() - t2;
        pending = fill;
        pend_off = buf_start;
        cur ^= 1;
    }
    if (r == CUDA_SUCCESS && !err && pending) {
        size_t n = pending;
        if (io->direct && n % IO_ALIGN) { /* the file's tail, padded to the block size */
            size_t padded = (size_t)round_up(n);
            memset((uint8_t *)io->buf[cur ^ 1] + n, 0, padded - n);
            n = padded;
        }
        uint64_t t1 = fgs_now_ns();
        err = write_at(fd, &io->direct, &dropped, io->buf[cur ^ 1], n, pend_off);
        io->io_ns += fgs_now_ns() - t1;
    }
    io->stream_ns = fgs_now_ns() - ts;
    if (r != CUDA_SUCCESS && !err) (void)S->api->cuStreamSynchronize(io->stream); /* nothing still lands later */
    if (close(fd) != 0 && !err && r == CUDA_SUCCESS) err = errno;
    if (dropped) note_buffered(S, path, "at the first write");
    if (r == CUDA_SUCCESS && !err) return 0;
    unlink(path);
    if (r != CUDA_SUCCESS)
        snprintf(io->why, sizeof io->why, "copying out failed with CUDA error %d", (int)r);
    else
        snprintf(io->why, sizeof io->why, "writing the spill file failed: %s%s", strerror(err),
                 err == ENOSPC ? " (the spill directory's disk is full)" : "");
    return -1;
}

/* ---- page-in: reader threads fill slots, this thread copies them to the device in order ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fd, direct, dropped;
    uint8_t *slot[2 * (FGS_BOUNCE / (1u << 20))];
    size_t nslots;
    uint64_t chunk, end;   /* bytes per chunk; the logical end of what is read */
    size_t nchunks, next;  /* chunks in all; the next one a reader takes */
    size_t consumed;       /* chunks copied to the device: slot i % nslots is free for chunk i once i - nslots is */
    size_t *ready;         /* per slot: 1 + the chunk that is in it */
    int failed, stop, err; /* err: the errno of the failed read (EIO-like 0: the file ended early) */
    uint64_t err_off, err_got, err_need;
    uint64_t io_ns;
} spill_reader;

/* Reads want bytes at off (want: need rounded up to the block size); a file that ends after need bytes is fine.
 * 0, or an errno (-1: the file ended before need bytes). */
static int read_at(spill_reader *R, uint8_t *p, size_t want, size_t need, uint64_t off, uint64_t *got_out) {
    size_t got = 0;
    while (got < want) {
        ssize_t k = pread(R->fd, p + got, want - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && errno == EINVAL) {
            pthread_mutex_lock(&R->mu);
            int retry = R->direct && drop_direct(R->fd) == 0;
            if (retry) {
                R->direct = 0;
                R->dropped = 1;
            }
            pthread_mutex_unlock(&R->mu);
            if (retry) continue;
            return EINVAL;
        }
        if (k < 0) return errno;
        if (k == 0) break;
        got += (size_t)k;
    }
    *got_out = got;
    return got >= need ? 0 : -1;
}

static void *reader_main(void *arg) {
    spill_reader *R = (spill_reader *)arg;
    pthread_mutex_lock(&R->mu);
    while (!R->stop && !R->failed && R->next < R->nchunks) {
        size_t i = R->next++;
        while (i >= R->consumed + R->nslots && !R->stop && !R->failed) pthread_cond_wait(&R->cv, &R->mu);
        if (R->stop || R->failed) break;
        pthread_mutex_unlock(&R->mu);
        uint64_t off = (uint64_t)i * R->chunk;
        size_t need = (size_t)(R->end - off < R->chunk ? R->end - off : R->chunk);
        uint64_t got = 0, t = fgs_now_ns();
        int e = read_at(R, R->slot[i % R->nslots], (size_t)round_up(need), need, off, &got);
        uint64_t dt = fgs_now_ns() - t;
        pthread_mutex_lock(&R->mu);
        R->io_ns += dt;
        if (e && !R->failed) {
            R->failed = 1;
            R->err = e < 0 ? 0 : e;
            R->err_off = off;
            R->err_got = got;
            R->err_need = need;
        } else if (!e) {
            R->ready[i % R->nslots] = i + 1;
        }
        pthread_cond_broadcast(&R->cv);
    }
    pthread_mutex_unlock(&R->mu);
    return NULL;
}

static unsigned env_uint(const char *name, unsigned dflt, unsigned lo, unsigned hi) {
    const char *e = getenv(name);
    if (!e || !*e) return dflt;
    char *end = NULL;
    unsigned long v = strtoul(e, &end, 10);
    if (*end || v < lo || v > hi) return dflt;
    return (unsigned)v;
}

static const fgs_session *sort_session; /* qsort has no context argument; page-ins run on one thread */

static int by_page_off(const void *x, const void *y) {
    uint64_t a = sort_session->allocs[*(const size_t *)x].page_off, b = sort_session->allocs[*(const size_t *)y].page_off;
    return a < b ? -1 : a > b;
}

int fgs_spill_in(fgs_session *S, const char *path, fgs_spill_io *io) {
    io->why[0] = 0;
    io->io_ns = io->copy_ns = io->wait_ns = io->first_ns = io->stream_ns = io->open_ns = 0;
    /* The allocations in file order; they must not overlap (a malformed parked state is refused, never guessed). */
    size_t n = S->n_allocs;
    size_t *order = (size_t *)malloc((n ? n : 1) * sizeof *order);
    if (!order) {
        snprintf(io->why, sizeof io->why, "out of host memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) order[i] = i;
    sort_session = S;
    qsort(order, n, sizeof *order, by_page_off);
    uint64_t end = 0;
    for (size_t k = 0; k < n; k++) {
        const fgs_alloc *a = &S->allocs[order[k]];
        if (a->page_off < end || a->mapped > UINT64_MAX - a->page_off) {
            free(order);
            snprintf(io->why, sizeof io->why, "the session's page map is malformed (allocations overlap in the file)");
            return -1;
        }
        end = a->page_off + a->mapped;
    }
    unsigned chunk_mb = env_uint("FARGPU_SPILL_CHUNK_MB", 32, 1, FGS_BOUNCE >> 20);
    while (chunk_mb & (chunk_mb - 1)) chunk_mb &= chunk_mb - 1; /* a power of two: slots tile the buffers exactly */
    spill_reader R;
    memset(&R, 0, sizeof R);
    R.chunk = (uint64_t)chunk_mb << 20;
    R.nslots = 2 * (FGS_BOUNCE / (size_t)R.chunk);
    for (size_t s = 0; s < R.nslots; s++)
        R.slot[s] = (uint8_t *)io->buf[s * R.chunk / FGS_BOUNCE] + (s * R.chunk) % FGS_BOUNCE;
    unsigned depth = env_uint("FARGPU_SPILL_READ_DEPTH", 2, 1, MAX_DEPTH);
    if (depth > R.nslots - 1) depth = (unsigned)R.nslots - 1;
    io->depth = depth;
    io->chunk = R.chunk;
    R.end = end;
    R.nchunks = (size_t)((end + R.chunk - 1) / R.chunk);
    size_t ready_slots[sizeof R.slot / sizeof R.slot[0]];
    memset(ready_slots, 0, sizeof ready_slots);
    R.ready = ready_slots;
    uint64_t t0 = fgs_now_ns();
    if (mostly_cached(path)) {
        R.fd = open(path, O_RDONLY | O_CLOEXEC);
        R.direct = 0;
    } else {
        R.fd = open_spill(S, path, O_RDONLY, &R.direct);
    }
    io->open_ns = fgs_now_ns() - t0;
    if (R.fd < 0) {
        snprintf(io->why, sizeof io->why, "cannot open the spill file %s: %s", path, strerror(errno));
        free(order);
        return -1;
    }
    pthread_mutex_init(&R.mu, NULL);
    pthread_cond_init(&R.cv, NULL);
    pthread_t th[MAX_DEPTH];
    unsigned started = 0;
    uint64_t ts = fgs_now_ns();
    for (unsigned k = 0; k < depth && R.nchunks; k++)
        if (pthread_create(&th[started], NULL, reader_main, &R) == 0) started++;
    CUresult r = CUDA_SUCCESS;
    int failed = 0;
    if (R.nchunks && !started) {
        snprintf(io->why, sizeof io->why, "cannot start a thread to read the spill file");
        failed = 1;
    }
    size_t k = 0; /* order[k]: the first allocation not yet wholly copied */
    for (size_t i = 0; i < R.nchunks && !failed; i++) {
        size_t s = i % R.nslots;
        uint64_t tw = fgs_now_ns();
        pthread_mutex_lock(&R.mu);
        while (R.ready[s] != i + 1 && !R.failed) pthread_cond_wait(&R.cv, &R.mu);
        failed = R.failed && R.ready[s] != i + 1;
        pthread_mutex_unlock(&R.mu);
        uint64_t tr = fgs_now_ns();
        io->wait_ns += tr - tw;
        if (i == 0) io->first_ns = tr - ts;
        if (failed) break;
        uint64_t c0 = (uint64_t)i * R.chunk, c1 = c0 + R.chunk < end ? c0 + R.chunk : end;
        size_t finished = 0;
        for (size_t j = k; j < n && r == CUDA_SUCCESS; j++) {
            const fgs_alloc *a = &S->allocs[order[j]];
            if (a->page_off >= c1) break;
            uint64_t lo = a->page_off > c0 ? a->page_off : c0;
            uint64_t hi = a->page_off + a->mapped < c1 ? a->page_off + a->mapped : c1;
            if (hi > lo)
                r = S->api->cuMemcpyHtoDAsync_v2(a->ptr + (lo - a->page_off), R.slot[s] + (lo - c0), (size_t)(hi - lo),
                                                 io->stream);
            if (a->page_off + a->mapped <= c1) finished++;
        }
        if (r == CUDA_SUCCESS) r = S->api->cuStreamSynchronize(io->stream);
        io->copy_ns += fgs_now_ns() - tr;
        if (r != CUDA_SUCCESS) {
            snprintf(io->why, sizeof io->why, "copying to the device failed with CUDA error %d", (int)r);
            failed = 1;
            break;
        }
        for (size_t f = 0; f < finished; f++) delay(io);
        k += finished;
        pthread_mutex_lock(&R.mu);
        R.ready[s] = 0;
        R.consumed = i + 1;
        pthread_cond_broadcast(&R.cv);
        pthread_mutex_unlock(&R.mu);
    }
    pthread_mutex_lock(&R.mu);
    R.stop = 1;
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
    for (unsigned t = 0; t < started; t++) pthread_join(th[t], NULL);
    io->stream_ns = fgs_now_ns() - ts;
    io->io_ns = R.io_ns;
    io->direct = R.direct;
    if (R.failed && !io->why[0]) {
        if (R.err)
            snprintf(io->why, sizeof io->why, "reading the spill file failed at byte %llu: %s",
                     (unsigned long long)R.err_off, strerror(R.err));
        else
            snprintf(io->why, sizeof io->why, "the spill file ends early: %llu of %llu bytes at byte %llu",
                     (unsigned long long)R.err_got, (unsigned long long)R.err_need, (unsigned long long)R.err_off);
    }
    if (R.dropped) note_buffered(S, path, "at the first read");
    close(R.fd);
    pthread_mutex_destroy(&R.mu);
    pthread_cond_destroy(&R.cv);
    free(order);
    return failed || R.failed ? -1 : 0;
}
