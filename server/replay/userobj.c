/* userobj.c — cuUserObjectCreate for one session: "u64 cookie, u32 initial references, u32 flags". The object is
 * the node driver's, created with a destructor of this file's: when the driver drops the last reference (the
 * application's, or a graph's or executable's), that destructor runs the callbacks.c trampoline for the cookie,
 * which sends RUN over the client's callback connection, and the client runs the application's destructor on its
 * pointer. The object's handle is a per-session virtual id (FGH_USEROBJECT); retaining and releasing it, and the
 * references graphs own, are forwarded as they are (generated code).
 *
 * The driver calls destructors on an internal thread whenever it likes, also after the session has closed (a
 * graph destroyed at the end, its destructor run later), and nothing can wait for them. So each object's
 * destructor argument is a record in a list of live ones: the destructor looks its argument up by address before
 * touching it, and runs the trampoline only while the session is open; closing the session (fgs_userobj_close,
 * before the callbacks and the session are freed) empties the list under the same lock. */
#include <pthread.h>
#include <stdlib.h>

#include "fgs_impl.h"
#include "fgs_session.h"

typedef struct uo_rec {
    uint64_t cookie;
    struct uo_rec *next;
} uo_rec;

static pthread_mutex_t uo_mu = PTHREAD_MUTEX_INITIALIZER;
static fgs_session *g_S; /* one worker process serves one session at a time */
static uo_rec *g_live;

static int unlink_rec(uo_rec *u) { /* uo_mu held; 1 when u was live */
    for (uo_rec **p = &g_live; *p; p = &(*p)->next)
        if (*p == u) {
            *p = u->next;
            return 1;
        }
    return 0;
}

static void CUDA_CB destroy_trampoline(void *arg) {
    pthread_mutex_lock(&uo_mu);
    uo_rec *u = (uo_rec *)arg;
    if (g_S && unlink_rec(u)) {
        CUhostFn fn;
        void *a;
        if (fgs_callback_for_graph(g_S, u->cookie, &fn, &a) == CUDA_SUCCESS) fn(a); /* RUN, then DONE */
        free(u);
    }
    pthread_mutex_unlock(&uo_mu);
}

CUresult fgs_cuUserObjectCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t cookie = fg_get_u64(r);
    uint32_t refs = fg_get_u32(r), flags = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    if (!cookie) return CUDA_ERROR_INVALID_VALUE;
    if (!S->api->cuUserObjectCreate) return fgs_missing(S, "cuUserObjectCreate");
    uo_rec *u = (uo_rec *)calloc(1, sizeof *u);
    if (!u) return CUDA_ERROR_OUT_OF_MEMORY;
    u->cookie = cookie;
    pthread_mutex_lock(&uo_mu);
    g_S = S;
    u->next = g_live;
    g_live = u;
    pthread_mutex_unlock(&uo_mu);
    CUuserObject obj = NULL;
    CUresult res = S->api->cuUserObjectCreate(&obj, u, destroy_trampoline, refs, flags);
    if (res == CUDA_SUCCESS) {
        fg_put_u64(out, fgs_handle_add(S, FGH_USEROBJECT, obj));
    } else {
        pthread_mutex_lock(&uo_mu);
        if (unlink_rec(u)) free(u);
        pthread_mutex_unlock(&uo_mu);
    }
    return res;
}

void fgs_userobj_close(fgs_session *S) {
    pthread_mutex_lock(&uo_mu);
    if (g_S == S) {
        while (g_live) {
            uo_rec *n = g_live->next;
            free(g_live);
            g_live = n;
        }
        g_S = NULL;
    }
    pthread_mutex_unlock(&uo_mu);
}
