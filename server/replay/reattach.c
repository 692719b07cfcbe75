/* reattach.c — a live session whose client connection dropped (a network blip, a reset connection, a bulk copy
 * whose connections broke) waits for its client to come back, and takes its new connection (protocol/SPEC.md,
 * "Resuming").
 *
 * With FARGPU_WORKER_LINGER_S > 0 the serve loop does not end the session when the client's connection fails: it
 * closes the session's data connections and lingers (fgs_linger) for that long, answering control lines (a close,
 * a page-out, a park) meanwhile. The client reconnects with a resume HELLO; the node agent checks the resume key
 * and hands the connection to this worker, whose Python side offers it here (fgs_reattach_offer): a connection the
 * serve loop still believes in is shut down first, so the loop fails over to lingering at once. The offer answers
 * the seq to report as applied, then the Python side sends HELLO_OK and lets the loop go on with the new connection
 * (fgs_reattach_go); the client sends again every batch after that seq.
 *
 * One reply may be lost with the connection: the one to the last batch applied, when the client says (`have`, in
 * its HELLO) that it never read it. That reply is kept as it is sent (its fixed part and outputs copied, up to
 * FARGPU_WORKER_REPLY_KEEP_KB, default 1024; the async device→host copies it delivers by holding their staging
 * buffers until the next reply; those it delivered over the bulk path naming one connection, their bytes right
 * after the frame) and sent again after HELLO_OK; a lone bulk device→host copy (its batch holds nothing else
 * but a SET_CTX) has no effect on the device, so instead it is reported as not applied and runs again. A larger
 * reply that was lost cannot be replayed: the resume is refused with the reason (the client's call fails). A bulk
 * copy whose connections broke is not applied (its batch holds only the copy, and a host→device copy of the same
 * bytes to the same range again is harmless): the client sends it again, with its bytes, over the new connection. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgs_impl.h"
#include "fgs_public.h"
#include "fgs_session.h"

enum { SERVING, LINGERING, HANDSHAKE, GO, ENDED };

struct fgs_reattach {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake[2]; /* the Python side wrote: a connection is ready to take (GO) or was given up */
    int state;
    int offered; /* a connection waits for the loop to linger */
    int new_fd;
    int resend;        /* send the kept reply after HELLO_OK */
    int rewind;        /* report the last batch as not applied (a lone bulk device→host copy runs again) */
    uint32_t want_seq; /* the last batch that asked for a reply */
    int replayable;    /* that batch was a lone bulk device→host copy */
    uint8_t *reply;    /* its reply, when small enough to keep (reply_len > 0): what is not later copies' data */
    size_t reply_len, reply_cap;
    struct iovec *kiov; /* the whole reply: pieces of `reply`, and the later copies' buffers */
    int kn, kcap;
    fgs_later *later; /* the later copies it delivered (their buffers, held until the next reply) */
    size_t nl;
};

static pthread_mutex_t create_mu = PTHREAD_MUTEX_INITIALIZER;

static struct fgs_reattach *ra_of(fgs_session *S) {
    pthread_mutex_lock(&create_mu);
    if (!S->reattach) {
        struct fgs_reattach *R = (struct fgs_reattach *)calloc(1, sizeof *R);
        if (R && pipe2(R->wake, O_CLOEXEC | O_NONBLOCK) == 0) {
            pthread_mutex_init(&R->mu, NULL);
            pthread_cond_init(&R->cv, NULL);
            R->new_fd = -1;
            S->reattach = R;
        } else {
            free(R);
        }
    }
    pthread_mutex_unlock(&create_mu);
    return S->reattach;
}

int fgs_linger_ms(void) {
    static int ms = -2;
    if (ms == -2) {
        const char *e = getenv("FARGPU_WORKER_LINGER_S");
        double s = e && *e ? atof(e) : 0.0;
        ms = s > 0 ? (int)(s * 1000.0) : 0;
    }
    return ms;
}

static size_t keep_limit(void) {
    static long kb = -1;
    if (kb < 0) {
        const char *e = getenv("FARGPU_WORKER_REPLY_KEEP_KB");
        kb = e && *e ? atol(e) : 1024;
        if (kb < 0) kb = 0;
    }
    return (size_t)kb << 10;
}

void fgs_reattach_note_batch(fgs_session *S, uint32_t seq, int wanted_reply, int replayable) {
    if (!fgs_linger_ms() || !wanted_reply) return;
    struct fgs_reattach *R = ra_of(S);
    if (!R) return;
    pthread_mutex_lock(&R->mu);
    R->want_seq = seq;
    R->replayable = replayable;
    R->reply_len = 0; /* the reply is kept as it is sent (fgs_reattach_keep_reply) */
    pthread_mutex_unlock(&R->mu);
}

static void drop_reply(struct fgs_reattach *R) {
    R->reply_len = 0;
    R->kn = 0;
    fgs_later_free_list(R->later, R->nl);
    R->later = NULL;
    R->nl = 0;
}

int fgs_reattach_keep_reply(fgs_session *S, const struct iovec *iov, int n, size_t total, fgs_later *later,
                            size_t nl) {
    if (!fgs_linger_ms()) return 0;
    struct fgs_reattach *R = ra_of(S);
    if (!R) return 0;
    pthread_mutex_lock(&R->mu);
    drop_reply(R);
    size_t small = total, j = 0;
    for (size_t i = 0; i < nl; i++) small -= later[i].data ? later[i].n : 0;
    int ok = !R->replayable && small <= keep_limit();
    if (ok && R->reply_cap < small) {
        uint8_t *nb = (uint8_t *)realloc(R->reply, small ? small : 1);
        if (nb) {
            R->reply = nb;
            R->reply_cap = small;
        }
        ok = R->reply_cap >= small;
    }
    if (ok && R->kcap < n) {
        struct iovec *nv = (struct iovec *)realloc(R->kiov, (size_t)n * sizeof *nv);
        if (nv) {
            R->kiov = nv;
            R->kcap = n;
        }
        ok = R->kcap >= n;
    }
    if (ok) { /* the small pieces copied, each later copy's data by reference (they come in order: those inside the
               * frame, then those sent over the bulk path after it) */
        size_t at = 0, b = 0;
        for (int i = 0; i < n; i++) {
            while (j < nl && (!later[j].data || later[j].bulk)) j++;
            while (b < nl && (!later[b].data || !later[b].bulk)) b++;
            size_t *k = j < nl && iov[i].iov_base == later[j].data && iov[i].iov_len == later[j].n ? &j
                        : b < nl && iov[i].iov_base == later[b].data && iov[i].iov_len == later[b].n ? &b : NULL;
            if (k) {
                R->kiov[i] = iov[i];
                (*k)++;
                continue;
            }
            memcpy(R->reply + at, iov[i].iov_base, iov[i].iov_len);
            R->kiov[i] = (struct iovec){R->reply + at, iov[i].iov_len};
            at += iov[i].iov_len;
        }
        R->kn = n;
        R->reply_len = total;
        R->later = later;
        R->nl = nl;
    }
    pthread_mutex_unlock(&R->mu);
    return ok;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_state(struct fgs_reattach *R, int st) {
    R->state = st;
    pthread_cond_broadcast(&R->cv);
}

void fgs_reattach_ended(fgs_session *S) {
    struct fgs_reattach *R = S->reattach;
    if (!R) return;
    pthread_mutex_lock(&R->mu);
    set_state(R, ENDED);
    pthread_mutex_unlock(&R->mu);
}

int fgs_linger(fgs_session *S, int ctl_fd, int fd, const char *lost, char *reason, size_t reason_len) {
    int limit = fgs_linger_ms();
    struct fgs_reattach *R = limit ? ra_of(S) : NULL;
    if (!R) {
        snprintf(reason, reason_len, "%s", lost);
        return 1;
    }
    shutdown(fd, SHUT_RDWR); /* whatever the client still sends on it is moot */
    fgs_bulk_forget_data(S);  /* the client opens new data connections after it resumes */
    fgs_log(S, "%s: waiting up to %d s for the client to reconnect (FARGPU_WORKER_LINGER_S)", lost, limit / 1000);
    pthread_mutex_lock(&R->mu);
    set_state(R, LINGERING);
    pthread_mutex_unlock(&R->mu);
    int64_t deadline = now_ms() + limit;
    for (;;) {
        pthread_mutex_lock(&R->mu);
        int st = R->state;
        if (st == GO) {
            int nfd = R->new_fd, resend = R->resend;
            R->new_fd = -1;
            R->offered = 0;
            /* the new connection takes the old one's descriptor number (the worker's socket object owns it) */
            int bad = dup2(nfd, fd) < 0;
            close(nfd);
            if (!bad && resend && R->reply_len) {
                struct iovec *v = (struct iovec *)malloc((size_t)R->kn * sizeof *v); /* (the write moves them) */
                if (v) memcpy(v, R->kiov, (size_t)R->kn * sizeof *v);
                bad = !v || fgs_write_all(fd, v, R->kn) != 0;
                free(v);
            }
            if (bad) {
                set_state(R, LINGERING);
                pthread_mutex_unlock(&R->mu);
                continue;
            }
            set_state(R, SERVING);
            pthread_mutex_unlock(&R->mu);
            S->ahead_at = S->ahead_end = 0; /* what the old connection had sent is moot */
            S->client_fd = fd;
            fg_io_send_deadline(fd);
            fgs_log(S, "the client reconnected: the session goes on after batch %u%s", S->applied_seq,
                    resend ? " (its last reply sent again)" : "");
            return 0;
        }
        int handshaking = st == HANDSHAKE;
        pthread_mutex_unlock(&R->mu);
        int64_t left = deadline - now_ms();
        if (left <= 0 && !handshaking) break;
        struct pollfd pf[2] = {{R->wake[0], POLLIN, 0}, {ctl_fd, POLLIN, 0}};
        int np = poll(pf, ctl_fd >= 0 ? 2 : 1, left > 0 ? (int)(left < 1000 ? left : 1000) : 100);
        if (np < 0 && errno != EINTR) break;
        if (np > 0 && (pf[0].revents & POLLIN)) {
            char drain[64];
            while (read(R->wake[0], drain, sizeof drain) > 0) {
            }
        }
        if (np > 0 && ctl_fd >= 0 && (pf[1].revents & (POLLIN | POLLHUP))) {
            char why[256] = "the session was ended by the node server";
            if (fgs_control_read(S, ctl_fd, why, sizeof why) || fgs_close_pending(S, why, sizeof why)) {
                snprintf(reason, reason_len, "ended by control while its client was away: %s", why);
                fgs_reattach_ended(S);
                return 1;
            }
        }
    }
    snprintf(reason, reason_len, "%s, and it did not reconnect within %d s", lost, limit / 1000);
    fgs_reattach_ended(S);
    return 1;
}

FGS_EXPORT long long fgs_reattach_offer(fgs_session *S, int fd, unsigned int have, int wait_ms, char *err,
                                        unsigned long err_len) {
    struct fgs_reattach *R = fgs_linger_ms() ? ra_of(S) : NULL;
    if (!R) {
        snprintf(err, err_len, "this node does not keep a session whose client went away (FARGPU_WORKER_LINGER_S)");
        return -1;
    }
    pthread_mutex_lock(&R->mu);
    if (R->offered || R->state == ENDED || R->state == HANDSHAKE || R->state == GO) {
        /* ended: parked, maybe (the agent restores it once this worker is gone): the client tries again */
        snprintf(err, err_len, R->state == ENDED ? "the session has ended here" : "another resume of it is under way");
        pthread_mutex_unlock(&R->mu);
        return -2;
    }
    R->offered = 1;
    if (R->state == SERVING) { /* the loop still believes in the old connection (a silent drop): end it now */
        if (S->client_fd >= 0) shutdown(S->client_fd, SHUT_RDWR);
        fgs_bulk_shutdown_data(S);
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (R->state == SERVING && pthread_cond_timedwait(&R->cv, &R->mu, &until) == 0) {
    }
    if (R->state != LINGERING) {
        R->offered = 0;
        snprintf(err, err_len, R->state == ENDED ? "the session has ended here" : "the session is busy; try again");
        pthread_mutex_unlock(&R->mu);
        return -2;
    }
    uint32_t applied = S->applied_seq;
    R->resend = R->rewind = 0;
    if (R->want_seq == applied && (int32_t)(have - applied) < 0) { /* the client never read that reply */
        if (R->replayable) {
            R->rewind = 1; /* it runs again: it has no effect on the device */
        } else if (R->reply_len) {
            R->resend = 1;
        } else {
            R->offered = 0;
            snprintf(err, err_len, "the reply to batch %u was lost with the connection and was too large to keep "
                     "(FARGPU_WORKER_REPLY_KEEP_KB)", applied);
            pthread_mutex_unlock(&R->mu);
            return -1;
        }
    }
    R->new_fd = fd;
    set_state(R, HANDSHAKE);
    long long rep = (long long)(uint32_t)(applied - (uint32_t)R->rewind);
    pthread_mutex_unlock(&R->mu);
    return rep;
}

FGS_EXPORT void fgs_reattach_go(fgs_session *S, int ok) {
    struct fgs_reattach *R = S->reattach;
    if (!R) return;
    pthread_mutex_lock(&R->mu);
    if (R->state == HANDSHAKE) {
        if (ok) {
            if (R->rewind) S->applied_seq--; /* (the loop lingers: it reads applied_seq only once it goes on) */
            set_state(R, GO);
        } else {
            close(R->new_fd);
            R->new_fd = -1;
            R->offered = 0;
            set_state(R, LINGERING);
        }
    } else if (R->new_fd >= 0 && R->state != GO) { /* the loop gave up meanwhile */
        close(R->new_fd);
        R->new_fd = -1;
    }
    pthread_mutex_unlock(&R->mu);
    ssize_t w = write(R->wake[1], "g", 1);
    (void)w;
}

void fgs_reattach_close(fgs_session *S) {
    struct fgs_reattach *R = S->reattach;
    if (!R) return;
    if (R->new_fd >= 0) close(R->new_fd);
    close(R->wake[0]);
    close(R->wake[1]);
    drop_reply(R);
    free(R->kiov);
    free(R->reply);
    pthread_cond_destroy(&R->cv);
    pthread_mutex_destroy(&R->mu);
    free(R);
    S->reattach = NULL;
}
