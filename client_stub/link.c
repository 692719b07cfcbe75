/* link.c — JIT linking through the node: cuLinkCreate_v2, cuLinkAddData_v2, cuLinkAddFile_v2, cuLinkComplete,
 * cuLinkDestroy (server/replay/link.c has the wire formats).
 *
 * The application's CUlinkState is the node's virtual id. JIT options travel as (option, value) pairs: a scalar
 * value as given, a log buffer as its capacity (the value of the matching size option). Options whose value is
 * an array of client pointers (global symbol names and addresses, referenced kernel and variable names) are
 * refused with CUDA_ERROR_NOT_SUPPORTED. The driver keeps cuLinkCreate's arrays for the link's life and writes
 * logs, sizes and the wall time into them, so the stub keeps the application's value array (the driver requires
 * it to stay valid until cuLinkDestroy) with the buffer capacities it had at creation, and after every link
 * call writes what the node answered into it: log text (capped at the buffer, NUL-terminated), the bytes-filled
 * sizes, the wall time (a float in the value slot, as the driver puts it), threads per block. Per-input options
 * of cuLinkAddData are answered the same way for that call. A file (cuLinkAddFile_v2) is read here and sent as
 * data, named by its path. Inputs are shipped content-addressed like module images (image.c). cuLinkComplete
 * brings the cubin back (in pieces when it is larger than a reply) into a copy that the link state owns here:
 * valid until cuLinkDestroy, as the driver's own. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_image.h"
#include "fgc_internal.h"
#include "fgc_jit.h"

typedef struct link_rec {
    uint64_t id;
    uint32_t n;
    CUjit_option opt[FGC_MAX_JIT_OPTIONS];
    void **val;                    /* the application's array */
    uint32_t cap[FGC_MAX_JIT_OPTIONS]; /* log buffers' capacities at creation */
    void *cubin;
    size_t cubin_n;
    struct link_rec *next;
} link_rec;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static link_rec *g_links;

/* A copy of the record's creation arrays (the record itself may go while the call runs). */
static int rec_get(uint64_t id, link_rec *copy) {
    pthread_mutex_lock(&g_mu);
    link_rec *L = g_links;
    while (L && L->id != id) L = L->next;
    if (L) *copy = *L;
    pthread_mutex_unlock(&g_mu);
    return L ? 0 : -1;
}

static size_t rec_reply_bytes(const link_rec *L) {
    size_t b = 16;
    for (uint32_t i = 0; i < L->n; i++) b += 16 + (fgc_jit_is_log(L->opt[i]) ? L->cap[i] : 0);
    return b;
}

CUresult fgc_cuLinkCreate_v2(unsigned int numOptions, CUjit_option *options, void **optionValues,
                             CUlinkState *stateOut) {
    FGC_REQUIRE_INIT();
    if (!stateOut) return CUDA_ERROR_INVALID_VALUE;
    size_t want = 64;
    CUresult r = fgc_jit_encode(NULL, numOptions, options, optionValues, NULL);
    if (r != CUDA_SUCCESS) return r;
    link_rec *L = (link_rec *)calloc(1, sizeof *L);
    if (!L) return CUDA_ERROR_OUT_OF_MEMORY;
    L->n = numOptions;
    L->val = optionValues;
    for (unsigned i = 0; i < numOptions; i++) {
        L->opt[i] = options[i];
        uint32_t c = fgc_jit_is_log(options[i]) ? fgc_jit_log_cap(numOptions, options, optionValues, i) : 0;
        L->cap[i] = c < FGC_MAX_JIT_LOG + 1 ? c : FGC_MAX_JIT_LOG + 1;
    }
    for (unsigned i = 0; i < numOptions; i++) want += 16 + (fgc_jit_is_log(options[i]) ? L->cap[i] : 0);
    uint8_t *reply = NULL;
    fg_writer *w = fgc_begin_var(FG_OP_cuLinkCreate_v2, want, &reply, &r);
    if (!w) {
        free(L);
        return r;
    }
    size_t unused = 0;
    (void)fgc_jit_encode(w, numOptions, options, optionValues, &unused);
    fg_reader rd;
    r = fgc_sync_var_reply(reply, want, &rd);
    if (r == CUDA_SUCCESS) {
        r = (CUresult)fg_get_u32(&rd);
        L->id = fg_get_u64(&rd);
        if (rd.failed || fgc_jit_apply(&rd, numOptions, options, optionValues, L->cap)) r = CUDA_ERROR_UNKNOWN;
        free(reply);
    }
    if (r != CUDA_SUCCESS || !L->id) {
        free(L);
        return r == CUDA_SUCCESS ? CUDA_ERROR_UNKNOWN : r;
    }
    pthread_mutex_lock(&g_mu);
    L->next = g_links;
    g_links = L;
    pthread_mutex_unlock(&g_mu);
    *stateOut = (CUlinkState)(uintptr_t)L->id;
    return CUDA_SUCCESS;
}

CUresult fgc_cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void *data, size_t size, const char *name,
                              unsigned int numOptions, CUjit_option *options, void **optionValues) {
    FGC_REQUIRE_INIT();
    if (!data || !size) return CUDA_ERROR_INVALID_VALUE;
    if (size > FG_MAX_IMAGE) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = fgc_handle_id(state);
    link_rec rec;
    int known = rec_get(id, &rec) == 0;
    size_t want = 64 + (known ? rec_reply_bytes(&rec) : 0);
    fg_writer x;
    fg_writer_init(&x, 256, (size_t)1 << 20);
    fg_put_u64(&x, id);
    fg_put_u32(&x, (uint32_t)type);
    fg_put_u32(&x, name ? 1 : 0);
    if (name) {
        size_t k = strnlen(name, 4096);
        fg_put_u32(&x, (uint32_t)(k + 1));
        fg_put(&x, name, k);
        fg_put(&x, "", 1);
    }
    CUresult r = fgc_jit_encode(&x, numOptions, options, optionValues, &want);
    if (r == CUDA_SUCCESS && x.failed) r = CUDA_ERROR_OUT_OF_MEMORY;
    uint8_t *reply = r == CUDA_SUCCESS ? (uint8_t *)malloc(want) : NULL;
    if (r == CUDA_SUCCESS && !reply) r = CUDA_ERROR_OUT_OF_MEMORY;
    size_t got = 0;
    if (r == CUDA_SUCCESS) r = fgc_image_call(FG_OP_cuLinkAddData_v2, data, size, x.buf, x.len, reply, want, &got);
    fg_writer_free(&x);
    if (r == CUDA_SUCCESS) {
        fg_reader rd;
        fg_reader_init(&rd, reply, got);
        r = (CUresult)fg_get_u32(&rd);
        int bad = rd.failed;
        if (!bad) bad = known ? fgc_jit_apply(&rd, rec.n, rec.opt, rec.val, rec.cap) : fg_get_u32(&rd) != 0;
        if (!bad) bad = fgc_jit_apply(&rd, numOptions, options, optionValues, NULL);
        if (bad) r = CUDA_ERROR_UNKNOWN;
    }
    free(reply);
    return r;
}

CUresult fgc_cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char *path, unsigned int numOptions,
                              CUjit_option *options, void **optionValues) {
    FGC_REQUIRE_INIT();
    if (!path) return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(path, "rb");
    if (!f) return CUDA_ERROR_FILE_NOT_FOUND;
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && (uint64_t)n <= FG_MAX_IMAGE && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = (uint8_t *)malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) return n == 0 ? CUDA_ERROR_INVALID_IMAGE : CUDA_ERROR_FILE_NOT_FOUND;
    buf[n] = 0;
    CUresult r = fgc_cuLinkAddData_v2(state, type, buf, (size_t)n, path, numOptions, options, optionValues);
    free(buf);
    return r;
}

/* One piece of the cubin: "u32 result, outputs, u64 size, u64 offset, u32 n, n bytes". */
static CUresult complete_piece(uint64_t id, uint64_t off, link_rec *rec, int known, uint8_t **cubin, size_t *size,
                               size_t *have) {
    size_t want = 64 + FG_CHUNK + (known && off == 0 ? rec_reply_bytes(rec) : 0);
    uint8_t *reply = NULL;
    CUresult r;
    fg_writer *w = fgc_begin_var(FG_OP_cuLinkComplete, want, &reply, &r);
    if (!w) return r;
    fg_put_u64(w, id);
    fg_put_u64(w, off);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(reply, want, &rd)) != CUDA_SUCCESS) return r;
    r = (CUresult)fg_get_u32(&rd);
    int bad = rd.failed || (known && off == 0 ? fgc_jit_apply(&rd, rec->n, rec->opt, rec->val, rec->cap)
                                              : fg_get_u32(&rd) != 0);
    uint64_t total = fg_get_u64(&rd), at = fg_get_u64(&rd);
    uint32_t len = fg_get_u32(&rd);
    const uint8_t *bytes = fg_take(&rd, len);
    if (!bad && r == CUDA_SUCCESS) {
        if (rd.failed || at != off || !total || total > FG_MAX_IMAGE || len > total - off || (!len && off < total) ||
            (off && total != *size))
            bad = 1;
        else {
            if (off == 0) {
                *cubin = (uint8_t *)malloc((size_t)total + 1); /* a NUL after it, as after PTX text */
                if (!*cubin) {
                    free(reply);
                    return CUDA_ERROR_OUT_OF_MEMORY;
                }
                (*cubin)[total] = 0;
                *size = (size_t)total;
            }
            memcpy(*cubin + off, bytes, len);
            *have = (size_t)(off + len);
        }
    }
    free(reply);
    return bad ? CUDA_ERROR_UNKNOWN : r;
}

CUresult fgc_cuLinkComplete(CUlinkState state, void **cubinOut, size_t *sizeOut) {
    FGC_REQUIRE_INIT();
    if (!cubinOut || !sizeOut) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = fgc_handle_id(state);
    link_rec rec;
    int known = rec_get(id, &rec) == 0;
    uint8_t *cubin = NULL;
    size_t size = 0, have = 0;
    CUresult r = complete_piece(id, 0, &rec, known, &cubin, &size, &have);
    while (r == CUDA_SUCCESS && have < size) r = complete_piece(id, have, &rec, known, &cubin, &size, &have);
    if (r != CUDA_SUCCESS) {
        free(cubin);
        return r;
    }
    pthread_mutex_lock(&g_mu);
    link_rec *L = g_links;
    while (L && L->id != id) L = L->next;
    if (L) {
        free(L->cubin); /* a second completion replaces the first one's copy */
        L->cubin = cubin;
        L->cubin_n = size;
    }
    pthread_mutex_unlock(&g_mu);
    if (!L) { /* destroyed meanwhile by another thread */
        free(cubin);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    *cubinOut = cubin;
    *sizeOut = size;
    return CUDA_SUCCESS;
}

CUresult fgc_cuLinkDestroy(CUlinkState state) {
    FGC_REQUIRE_INIT();
    uint64_t id = fgc_handle_id(state);
    fg_writer *w = fgc_begin(FG_OP_cuLinkDestroy);
    if (!w) return fgc_last_error();
    fg_put_u64(w, id);
    CUresult r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    pthread_mutex_lock(&g_mu);
    link_rec **p = &g_links;
    while (*p && (*p)->id != id) p = &(*p)->next;
    link_rec *L = *p;
    if (L) *p = L->next;
    pthread_mutex_unlock(&g_mu);
    if (L) {
        free(L->cubin);
        free(L);
    }
    return CUDA_SUCCESS;
}
