/* journal.c — the creation journal: what a parked session needs to be rebuilt with the same virtual ids.
 *
 * Every record that hands out a virtual id (fgs_handle_add: contexts, streams, events, modules, libraries,
 * functions, kernels, ...) or sets lasting state (limits, cache and shared-memory configs, function and kernel
 * attributes, stream attributes, module globals' lookups) is kept here after it succeeded: the op, its
 * arguments exactly as the client sent them, the context current when it ran, the ids it handed out and the
 * live ids its arguments name. Destroying a handle drops every entry that made it, ran in it or names it, so
 * the journal holds what is alive, in the order it was made. Loads keep a pointer to their image (the session
 * keeps every loaded image to its end, image.c).
 *
 * Restoring (park.c) replays the entries through the ordinary dispatch in a new worker whose salt is the old
 * one, with each handle placed in the slot its recorded id names (fgs_journal_forced), so every id the client
 * holds means the same object again. */
#include <stdlib.h>
#include <string.h>

#include "fgs_journal.h"
#include "fgs_session.h"

int fgs_journal_is_load(unsigned op) {
    return op == FG_OP_cuModuleLoadData || op == FG_OP_cuModuleLoadDataEx || op == FG_OP_cuLibraryLoadData;
}

int fgs_journal_is_global(unsigned op) { return op == FG_OP_cuModuleGetGlobal_v2 || op == FG_OP_cuLibraryGetGlobal; }

/* Ops kept although they hand out no id: they set state a rebuilt session must have again. */
static int is_setter(unsigned op) {
    switch (op) {
    case FG_OP_cuCtxSetCacheConfig:
    case FG_OP_cuCtxSetLimit:
    case FG_OP_cuCtxSetSharedMemConfig:
    case FG_OP_cuCtxSetFlags:
    case FG_OP_cuDevicePrimaryCtxSetFlags_v2:
    case FG_OP_cuFuncSetAttribute:
    case FG_OP_cuFuncSetCacheConfig:
    case FG_OP_cuFuncSetSharedMemConfig:
    case FG_OP_cuFuncLoad:
    case FG_OP_cuKernelSetAttribute:
    case FG_OP_cuKernelSetCacheConfig:
    case FG_OP_cuStreamSetAttribute:
    case FG_OP_cuStreamCopyAttributes:
    case FG_OP_cuDeviceSetMemPool:
    case FG_OP_cuMemPoolSetAttribute:
    case FG_OP_cuMemPoolSetAccess:
    case FG_OP_cuModuleGetGlobal_v2:
    case FG_OP_cuLibraryGetGlobal:
        return 1;
    default:
        return 0;
    }
}

/* Setters whose newest call replaces every earlier one with the same leading argument bytes (the object and what
 * of it is set): the older entries die, so a setter called again and again keeps one entry. */
static size_t superseding_key(unsigned op) {
    return op == FG_OP_cuMemPoolSetAttribute ? 12 : 0; /* pool id, attribute */
}

static void supersede(struct fgs_journal *J, unsigned op, const uint8_t *args, size_t len) {
    size_t k = superseding_key(op);
    if (!k || len < k) return;
    for (size_t i = 0; i < J->n; i++) {
        fgs_jentry *e = &J->e[i];
        if (!e->dead && e->op == op && e->arglen >= k && !memcmp(e->args, args, k)) {
            e->dead = 1;
            J->n_dead++;
        }
    }
}

int fgs_journal_open(fgs_session *S) {
    S->journal = (struct fgs_journal *)calloc(1, sizeof *S->journal);
    return S->journal ? 0 : -1;
}

static void entry_free(fgs_jentry *e) {
    free(e->ids);
    free(e->deps);
    free(e->args);
    free(e->outb);
    memset(e, 0, sizeof *e);
}

void fgs_journal_free(fgs_session *S) {
    struct fgs_journal *J = S->journal;
    if (!J) return;
    for (size_t i = 0; i < J->n; i++) entry_free(&J->e[i]);
    free(J->e);
    free(J->pending);
    free(J->moves);
    free(J->ev);
    free(J);
    S->journal = NULL;
}

int fgs_journal_append(struct fgs_journal *J, const fgs_jentry *e) {
    if (J->n == J->cap) {
        size_t cap = J->cap ? J->cap * 2 : 64;
        fgs_jentry *ne = (fgs_jentry *)realloc(J->e, cap * sizeof *ne);
        if (!ne) return -1;
        J->e = ne;
        J->cap = cap;
    }
    J->e[J->n++] = *e;
    return 0;
}

uint64_t fgs_journal_forced(fgs_session *S, int kind) {
    struct fgs_journal *J = S->journal;
    (void)kind; /* fgs_handle_put_at checks the kind */
    if (!J->restoring) return 0;
    if (J->forced_at >= J->n_forced) {
        J->forced_bad = 1; /* the op handed out more ids than it did the first time */
        return 0;
    }
    return J->forced[J->forced_at];
}

void fgs_journal_created(fgs_session *S, uint64_t id) {
    struct fgs_journal *J = S->journal;
    if (J->restoring) {
        if (J->forced_at >= J->n_forced || J->forced[J->forced_at] != id) J->forced_bad = 1;
        J->forced_at++;
        return;
    }
    if (J->n_pending == J->cap_pending) {
        size_t cap = J->cap_pending ? J->cap_pending * 2 : 16;
        uint64_t *np = (uint64_t *)realloc(J->pending, cap * sizeof *np);
        if (!np) {
            J->incomplete = 1;
            return;
        }
        J->pending = np;
        J->cap_pending = cap;
    }
    J->pending[J->n_pending++] = id;
}

static int has(const uint64_t *v, uint32_t n, uint64_t id) {
    for (uint32_t i = 0; i < n; i++)
        if (v[i] == id) return 1;
    return 0;
}

static void compact(struct fgs_journal *J) {
    size_t k = 0;
    for (size_t i = 0; i < J->n; i++) {
        if (J->e[i].dead) entry_free(&J->e[i]);
        else J->e[k++] = J->e[i];
    }
    J->n = k;
    J->n_dead = 0;
}

/* An entry that dies takes with it the functions, kernels and graph nodes it handed out (they are never
 * destroyed one by one: an unloaded module's functions go with it), and so every entry that names them. */
static void forget(struct fgs_journal *J, uint64_t id, int depth) {
    for (size_t i = 0; i < J->n; i++) {
        fgs_jentry *e = &J->e[i];
        if (e->dead || !(e->ctx == id || has(e->ids, e->n_ids, id) || has(e->deps, e->n_deps, id))) continue;
        e->dead = 1;
        J->n_dead++;
        for (uint32_t k = 0; k < e->n_ids && depth < 8; k++) {
            int kind = (int)((e->ids[k] >> 38) & 0x3f); /* handles.c's id layout */
            if (e->ids[k] != id && (kind == FGH_FUNCTION || kind == FGH_KERNEL || kind == FGH_GRAPHNODE))
                forget(J, e->ids[k], depth + 1);
        }
    }
}

void fgs_journal_forget(fgs_session *S, uint64_t id) {
    struct fgs_journal *J = S->journal;
    if (J->restoring) return;
    fgs_events_forget(S, id);
    forget(J, id, 0);
    if (J->n_dead > 64 && J->n_dead * 2 > J->n) compact(J);
}

/* The live ids of this session that the arguments name, wherever they sit in them. */
static int scan_deps(fgs_session *S, fgs_jentry *e) {
    uint32_t cap = 0;
    for (uint32_t i = 0; i + 8 <= e->arglen; i++) {
        uint64_t v;
        memcpy(&v, e->args + i, 8);
        if ((v & 0xf) || (v >> 44) != 1 || !fgs_handle_kind_of(S, v) || has(e->deps, e->n_deps, v)) continue;
        if (e->n_deps == cap) {
            cap = cap ? cap * 2 : 4;
            uint64_t *nd = (uint64_t *)realloc(e->deps, cap * sizeof *nd);
            if (!nd) return -1;
            e->deps = nd;
        }
        e->deps[e->n_deps++] = v;
    }
    return 0;
}

void fgs_journal_note(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res,
                      const fg_writer *out, size_t out_before) {
    struct fgs_journal *J = S->journal;
    if (J->restoring) return;
    fgs_events_note(S, op, args, len, res);
    size_t n_ids = J->n_pending;
    J->n_pending = 0;
    if (res != CUDA_SUCCESS || op == FG_OP_SET_CTX || (!n_ids && !is_setter(op))) return;
    supersede(J, op, args, len);
    if (J->n_dead > 64 && J->n_dead * 2 > J->n) compact(J);
    fgs_jentry e;
    memset(&e, 0, sizeof e);
    e.op = (uint16_t)op;
    CUcontext cur = NULL;
    if (S->api->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur) e.ctx = fgs_handle_id_of(S, FGH_CONTEXT, cur);
    int bad = len > UINT32_MAX;
    e.arglen = (uint32_t)len;
    if (!bad && len && !(e.args = (uint8_t *)malloc(len))) bad = 1;
    if (!bad && len) memcpy(e.args, args, len);
    if (!bad && n_ids) {
        e.ids = (uint64_t *)malloc(n_ids * sizeof *e.ids);
        if (!e.ids) bad = 1;
        else memcpy(e.ids, J->pending, n_ids * sizeof *e.ids);
        e.n_ids = (uint32_t)n_ids;
    }
    if (!bad && fgs_journal_is_global(op) && out->len > out_before) {
        e.outlen = (uint32_t)(out->len - out_before);
        if (!(e.outb = (uint8_t *)malloc(e.outlen))) bad = 1;
        else memcpy(e.outb, out->buf + out_before, e.outlen);
    }
    if (!bad && fgs_journal_is_load(op)) {
        /* fgs_image_get appended the image it loaded; the record begins with its SHA-256 and size */
        if (!S->n_images || len < 40) bad = 1;
        else {
            e.image = S->images[S->n_images - 1];
            memcpy(&e.image_size, args + 32, 8);
        }
    }
    if (!bad) bad = scan_deps(S, &e);
    if (!bad) bad = fgs_journal_append(J, &e);
    if (bad) {
        entry_free(&e);
        J->incomplete = 1;
        fgs_log(S, "the creation journal could not keep a record (out of memory): this session cannot be parked");
    }
}
