/* park_events.c — events across a park: which events were recorded, and their timings, come back with the session.
 *
 * The worker notes every successful cuEventRecord / cuEventRecordWithFlags / cuCtxRecordEvent (fgs_events_note,
 * from the journal's hook after each record) in a byte per event slot, cleared when the event is destroyed. An
 * event cuCtxRecordEvent recorded (the work of all the context's streams) is complete after the page-out as one
 * recorded on a stream is, so it comes back the same way. A park happens after a
 * page-out, which drained every stream, so every recorded event is complete then: the state keeps, for each
 * recorded event, its id and, where the driver can time it, its elapsed time in ms from a reference event (the
 * first recorded event it can be timed against; events of other contexts or created with
 * CU_EVENT_DISABLE_TIMING get their own reference, or none).
 *
 * Restoring records each such event again on its context's NULL stream and waits for it, so it is recorded and
 * complete, as it was (cuEventQuery answers CUDA_SUCCESS, cuStreamWaitEvent does not wait, cuEventSynchronize
 * returns at once); an event never recorded stays unrecorded. cuEventElapsedTime between two events recorded
 * before the park, and not since, is answered from the saved times (fgs_events_answer), exactly as before the
 * park; once either is recorded again, the driver answers. What stays different: the time from an event
 * recorded before the park to one recorded after it counts from the restore, not from the original record (the
 * park's pause is not known to the new worker). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_journal.h"
#include "fgs_session.h"

#define SLOT(id) ((((id) >> 4) & 0xfffff) - 1) /* handles.c's id layout: the table index */
#define KIND(id) ((int)(((id) >> 38) & 0x3f))

static fgs_evstate *slot_of(struct fgs_journal *J, uint64_t id, int grow) {
    uint64_t i = SLOT(id);
    if (i >= (1u << 20)) return NULL;
    if (i >= J->n_ev) {
        if (!grow) return NULL;
        size_t n = J->n_ev ? J->n_ev : 64;
        while (n <= i) n *= 2;
        fgs_evstate *ne = (fgs_evstate *)realloc(J->ev, n * sizeof *ne);
        if (!ne) return NULL;
        memset(ne + J->n_ev, 0, (n - J->n_ev) * sizeof *ne);
        J->ev = ne;
        J->n_ev = n;
    }
    return &J->ev[i];
}

void fgs_events_note(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res) {
    struct fgs_journal *J = S->journal;
    if (res != CUDA_SUCCESS) return;
    size_t at; /* where the event's id is in the record: "u64 event, u64 stream" or "u64 context, u64 event" */
    if (op == FG_OP_cuEventRecord || op == FG_OP_cuEventRecordWithFlags) at = 0;
    else if (op == FG_OP_cuCtxRecordEvent) at = 8;
    else return;
    if (len < at + 8) return;
    uint64_t id;
    memcpy(&id, args + at, 8);
    fgs_evstate *e = slot_of(J, id, 1);
    if (!e) {
        J->incomplete = 1; /* out of memory: the session cannot be parked faithfully */
        return;
    }
    e->recorded = 1;
    e->timed = 0; /* recorded again: the driver times it from now on */
}

void fgs_events_forget(fgs_session *S, uint64_t id) {
    if (KIND(id) != FGH_EVENT) return;
    fgs_evstate *e = slot_of(S->journal, id, 0);
    if (e) memset(e, 0, sizeof *e);
}

/* The context an event was created in (its creation's journal entry), or NULL. */
static void *event_ctx(fgs_session *S, uint64_t id) {
    struct fgs_journal *J = S->journal;
    for (size_t i = 0; i < J->n; i++) {
        const fgs_jentry *e = &J->e[i];
        if (e->dead || e->op != FG_OP_cuEventCreate || e->n_ids < 1 || e->ids[0] != id) continue;
        void *ctx = NULL;
        if (e->ctx) fgs_handle_get(S, FGH_CONTEXT, e->ctx, &ctx);
        return ctx;
    }
    return NULL;
}

/* u32 count, then per recorded event: u64 id, u64 reference id (0: no timing), f32 ms from the reference. */
void fgs_events_put(fgs_session *S, fg_writer *w) {
    struct fgs_journal *J = S->journal;
    fgs_table *t = &S->tables[FGH_EVENT];
    size_t count_at = w->len;
    uint32_t count = 0;
    fg_put_u32(w, 0);
    uint64_t refs[64];
    size_t n_refs = 0;
    for (uint32_t i = 0; i < t->n && i < J->n_ev; i++) {
        if (!t->real[i] || !J->ev[i].recorded) continue;
        uint64_t id = fgs_handle_id_of(S, FGH_EVENT, t->real[i]);
        uint64_t ref = 0;
        float ms = 0;
        for (size_t k = 0; k < n_refs && !ref; k++) {
            void *r = NULL;
            if (!fgs_handle_get(S, FGH_EVENT, refs[k], &r) &&
                S->api->cuEventElapsedTime_v2(&ms, (CUevent)r, (CUevent)t->real[i]) == CUDA_SUCCESS && isfinite(ms))
                ref = refs[k];
        }
        if (!ref && n_refs < 64 &&
            S->api->cuEventElapsedTime_v2(&ms, (CUevent)t->real[i], (CUevent)t->real[i]) == CUDA_SUCCESS) {
            refs[n_refs++] = ref = id; /* the first of its kind: the others are timed against it */
            ms = 0;
        }
        if (J->ev[i].timed) { /* restored and not recorded since: keep its first life's time */
            ref = J->ev[i].ref;
            ms = J->ev[i].ms;
        }
        fg_put_u64(w, id);
        fg_put_u64(w, ref);
        fg_put(w, &ms, 4);
        count++;
    }
    if (!w->failed) memcpy(w->buf + count_at, &count, 4);
}

int fgs_events_get(fgs_session *S, fg_reader *r, char *err, size_t errlen) {
    uint32_t n = fg_get_u32(r);
    for (uint32_t i = 0; i < n && !r->failed; i++) {
        uint64_t id = fg_get_u64(r), ref = fg_get_u64(r);
        float ms = 0;
        fg_get(r, &ms, 4);
        void *ev = NULL;
        if (r->failed) break;
        if (fgs_handle_get(S, FGH_EVENT, id, &ev)) {
            snprintf(err, errlen, "a recorded event of the parked session did not come back");
            return -1;
        }
        S->api->cuCtxSetCurrent((CUcontext)event_ctx(S, id));
        CUresult res = S->api->cuEventRecord((CUevent)ev, NULL);
        if (res == CUDA_SUCCESS) res = S->api->cuEventSynchronize((CUevent)ev);
        fgs_evstate *e = res == CUDA_SUCCESS ? slot_of(S->journal, id, 1) : NULL;
        if (!e) {
            snprintf(err, errlen, "a recorded event could not be recorded again (CUDA error %d)", (int)res);
            return -1;
        }
        e->recorded = 1;
        e->timed = ref != 0;
        e->ref = ref;
        e->ms = ms;
    }
    if (r->failed) snprintf(err, errlen, "the parked state is malformed");
    return r->failed ? -1 : 0;
}

int fgs_events_answer(fgs_session *S, unsigned op, const uint8_t *args, size_t len, fg_writer *out, CUresult *res) {
    struct fgs_journal *J = S->journal;
    if (op != FG_OP_cuEventElapsedTime_v2 || !J || !J->n_ev || len < 17) return 0;
    uint64_t a, b;
    memcpy(&a, args + 1, 8);
    memcpy(&b, args + 9, 8);
    void *ra = NULL, *rb = NULL;
    if (fgs_handle_get(S, FGH_EVENT, a, &ra) || fgs_handle_get(S, FGH_EVENT, b, &rb)) return 0;
    fgs_evstate *ea = slot_of(J, a, 0), *eb = slot_of(J, b, 0);
    if (!ea || !eb || !ea->timed || !eb->timed || ea->ref != eb->ref) return 0;
    float ms = eb->ms - ea->ms;
    if (args[0]) fg_put(out, &ms, sizeof ms);
    *res = CUDA_SUCCESS;
    return 1;
}
