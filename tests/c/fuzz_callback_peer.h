/* fuzz_callback_peer.h — the client end of a session's callback connection, for fuzz_server.c (included there,
 * after its helpers and await_reply). A thread reads RUN messages (protocol/SPEC.md, "Callbacks": u32 magic,
 * u32 kind, u64 cookie, i32 status, u32 n, then n × (u64 id, u64 length, bytes)), checks what the server may
 * promise (ids increasing, lengths within a chunk), and answers DONE; a misbehaving peer answers its k-th RUN
 * with a wrong cookie, a wrong kind, or by closing, which must cost the server nothing but that connection.
 * callback_check scripts a host function after an async device→host copy and checks that the copy went with the
 * RUN message. */
#ifndef FUZZ_CALLBACK_PEER_H
#define FUZZ_CALLBACK_PEER_H

#define CBP_MAGIC 0x42434746u /* "FGCB" */

typedef struct {
    int fd;             /* the client's end */
    int misbehave;      /* 0: well behaved; 1 wrong cookie, 2 wrong kind, 3 close — at RUN number `at` */
    unsigned at;
    pthread_t th;
    unsigned long runs, copies, copy_bytes;
    uint64_t last_id;   /* the id of the last copy received, +1 (0: none yet) */
    uint32_t last_n;    /* copies in the last RUN */
} cb_peer;

typedef struct {
    uint32_t magic, kind;
    uint64_t cookie;
    int32_t status;
    uint32_t n;
} cbp_msg;

static void *cb_peer_main(void *arg) {
    cb_peer *p = (cb_peer *)arg;
    static uint8_t sink[1 << 16];
    cbp_msg m;
    while (read_full_to(p->fd, &m, sizeof m) == 0) {
        if (m.magic != CBP_MAGIC || m.kind != 1) {
            fail("callback connection: not a RUN message (magic %#x kind %u)", m.magic, m.kind);
            break;
        }
        __atomic_store_n(&p->last_n, m.n, __ATOMIC_SEQ_CST); /* read by the fuzzer after the reply */
        __atomic_add_fetch(&p->runs, 1, __ATOMIC_SEQ_CST);
        if (m.n > (1u << 20)) fail("RUN with %u copies", m.n);
        int broken = 0;
        for (uint32_t i = 0; i < m.n && !broken; i++) {
            uint64_t hd[2];
            if (read_full_to(p->fd, hd, sizeof hd)) {
                broken = 1;
                break;
            }
            if (p->last_id && hd[0] < p->last_id) fail("RUN copy id %" PRIu64 " after %" PRIu64, hd[0], p->last_id - 1);
            if (hd[1] > FG_CHUNK) {
                fail("RUN copy of %" PRIu64 " bytes", hd[1]);
                broken = 1;
                break;
            }
            p->last_id = hd[0] + 1;
            p->copies++;
            p->copy_bytes += hd[1];
            for (uint64_t left = hd[1]; left && !broken;) {
                size_t k = left < sizeof sink ? (size_t)left : sizeof sink;
                broken = read_full_to(p->fd, sink, k) != 0;
                left -= k;
            }
        }
        if (broken) break;
        cbp_msg d = {CBP_MAGIC, 2, m.cookie, 0, 0};
        if (p->misbehave && p->runs == p->at) {
            if (p->misbehave == 3) break;
            if (p->misbehave == 1) d.cookie ^= 0x55;
            else d.kind = 7;
        }
        if (send(p->fd, &d, sizeof d, MSG_NOSIGNAL) != (ssize_t)sizeof d) break;
    }
    shutdown(p->fd, SHUT_RDWR);
    return NULL;
}

/* Give the session a callback connection served by a peer thread. Returns 0, or -1 (nothing started). */
static int cb_peer_start(cb_peer *p, fgs_session *S, int misbehave, unsigned at) {
    memset(p, 0, sizeof *p);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return -1;
    if (fgs_set_callback_fd(S, sv[0])) {
        fail("fgs_set_callback_fd refused a socket");
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    p->fd = sv[1];
    p->misbehave = misbehave;
    p->at = at;
    if (pthread_create(&p->th, NULL, cb_peer_main, p)) exit(2);
    return 0;
}

/* A host function after an async device→host copy on its stream, with a callback connection: the copy rides
 * with the RUN message (the peer gets exactly it) and the reply after it carries none; after a misbehaving DONE
 * the reply carries it instead. The sim runs stream work at enqueue, so the trampoline ran before the reply. */
static void callback_check(session *s, pools *P, uint64_t ctx, cb_peer *peer) {
    buf pl = {0}, a = {0};
    add_record(&pl, FG_OP_PING, &(buf){0}); /* collect whatever earlier steps staged */
    s->seq++;
    send_frame(s, FG_T_BATCH, FG_F_WANT_REPLY, &pl, s->seq);
    await_reply(s, P, FG_OP_PING, 0, 0, EXP_ANY);
    if (s->closed) return;
    pl.n = 0;
    put64(&a, ctx);
    add_record(&pl, FG_OP_SET_CTX, &a);
    uint64_t n = 1 + rndn(4096);
    if (P->nptr && n > P->size[0]) n = P->size[0];
    a.n = 0;
    put64(&a, P->nptr ? P->ptr[0] : 0x1000); /* no allocation: the copy fails and goes with length 0 */
    put64(&a, 0);
    put64(&a, n);
    add_record(&pl, FG_OP_cuMemcpyDtoHAsync_v2, &a);
    a.n = 0;
    put64(&a, 0);
    put64(&a, 1 + rndn(1000));
    add_record(&pl, chance(50) ? FG_OP_cuLaunchHostFunc : FG_OP_cuStreamAddCallback, &a);
    add_record(&pl, FG_OP_PING, &(buf){0});
    unsigned long runs0 = __atomic_load_n(&peer->runs, __ATOMIC_SEQ_CST);
    s->seq++;
    send_frame(s, FG_T_BATCH, FG_F_WANT_REPLY, &pl, s->seq);
    free(pl.b);
    free(a.b);
    fg_header h;
    uint8_t *p;
    if (read_answer(s, &h, &p) != FG_T_REPLY || h.length < 24 || h.seq != s->seq) {
        fail("callback check: no REPLY");
        s->closed = 1;
        free(p);
        return;
    }
    uint32_t n_later;
    memcpy(&n_later, p + 12, 4);
    free(p);
    unsigned long runs = __atomic_load_n(&peer->runs, __ATOMIC_SEQ_CST) - runs0;
    uint32_t carried = __atomic_load_n(&peer->last_n, __ATOMIC_SEQ_CST);
    int misbehaved = peer->misbehave && peer->at <= runs0 + runs;
    if (runs != 1 || carried != 1)
        fail("callback check: %lu RUN messages carrying %u copies, want 1 and 1", runs, carried);
    else if (!misbehaved && n_later != 0)
        fail("callback check: the reply carries %u copies, want 0 (they went with RUN)", n_later);
    else if (misbehaved && n_later > 1)
        fail("callback check: the reply carries %u copies after a failed RUN", n_later);
}

/* After the session closed (the server closed its end): the peer sees EOF. */
static void cb_peer_join(cb_peer *p) {
    pthread_join(p->th, NULL);
    close(p->fd);
}

#endif
