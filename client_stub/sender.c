/* sender.c — prompt sending of async records. Without it a batch of async calls would wait in the stub until
 * the next synchronising call, and the GPU would sit idle while the application queues work: the GPU's time and
 * the application's time would add up instead of overlapping. A background thread sends any batch whose oldest
 * record has waited FARGPU_SEND_AFTER_US microseconds (default 20; 0 turns prompt sending off), so the server
 * replays launches while the application is still producing them. The application's thread never waits for it:
 * it only notes when a batch opens, and the connection lock is free while the sender's bytes are written.
 * Between batches the thread keeps polling a little while, then parks until the next batch opens (one wake-up
 * per burst of work, not per call). */
#include <errno.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

#include "fgc_internal.h"

#define IDLE_POLLS 256 /* empty polls before the thread parks */

static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started, parked;
static uint64_t send_after_ns = 20000;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *run(void *arg) {
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* wake within ~1 µs of the deadline, not the default 50 µs */
    unsigned idle = 0;
    pthread_mutex_lock(&g_fgc.mu);
    while (!g_fgc.broken) {
        uint64_t since = g_fgc.batch_since_ns, now = now_ns();
        if (since && now - since >= send_after_ns) {
            fgc_send_pending_unlocked(); /* unanswered: errors surface at the next sync call, as for any async
                                             call; the lock is free while the bytes go out */
            continue;
        }
        if (!since && ++idle > IDLE_POLLS) {
            parked = 1;
            pthread_cond_wait(&wake, &g_fgc.mu);
            parked = 0;
            idle = 0;
            continue;
        }
        if (since) idle = 0;
        uint64_t wait = since ? since + send_after_ns - now : send_after_ns;
        pthread_mutex_unlock(&g_fgc.mu);
        struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
        while (nanosleep(&ts, &ts) && errno == EINTR) {
        }
        pthread_mutex_lock(&g_fgc.mu);
    }
    started = 0;
    pthread_mutex_unlock(&g_fgc.mu);
    return NULL;
}

static void after_fork_child(void) { started = 0; parked = 0; } /* the thread does not exist in the child */

/* Called with g_fgc.mu held right after an async record was added. */
void fgc_sender_note(void) {
    if (g_fgc.batch_since_ns) return;
    g_fgc.batch_since_ns = now_ns();
    if (!started) {
        static int configured;
        if (!configured) {
            configured = 1;
            const char *e = getenv("FARGPU_SEND_AFTER_US");
            if (e && *e) send_after_ns = (uint64_t)strtoull(e, NULL, 10) * 1000u;
            pthread_atfork(NULL, NULL, after_fork_child);
        }
        if (send_after_ns == 0) return; /* off: batches go with the next sync call or when they fill */
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &a, run, NULL) == 0) started = 1;
        pthread_attr_destroy(&a);
    } else if (parked) {
        pthread_cond_signal(&wake);
    }
}
