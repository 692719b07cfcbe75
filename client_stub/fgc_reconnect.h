/* fgc_reconnect.h — resuming a session whose connection dropped (reconnect.c): the batches sent since the last
 * reply are kept, and after a reconnect the server says which one it applied last and the rest go again. */
#ifndef FGC_RECONNECT_H
#define FGC_RECONNECT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "fg_wire.h"

#define FGC_RESUME_KEY_CAP 80

/* conn.c's part */
int fgc_dial(const char *ep, char *err, size_t errlen);
int fgc_send_hello(int fd);
void fgc_set_endpoint(const char *ep, const char *token);
void fgc_set_attach_key(const char *key); /* the restored worker's, for the session's second connections */
/* The session's resume key (from HELLO_OK) is written here. */
char *fgc_resume_key_buf(void);
/* While resuming: the key to send in the HELLO; NULL otherwise. */
const char *fgc_resume_hello(void);
/* batch.c's part: a frame about to be written (borrowed while the caller waits for its reply: want_reply; copied
 * otherwise), a reply that covers every frame up to seq, and the reconnect itself (g_fgc.mu held): 0 when the
 * session goes on over a new connection with every unapplied frame sent again, -1 when it cannot (the caller
 * marks the connection broken). closing: the server's CLOSE reason, or NULL for a dropped connection. */
void fgc_resume_keep(const struct iovec *iov, int n, uint32_t seq, int want_reply);
void fgc_resume_acked(uint32_t seq);
/* An async batch frame (header head, payload w's bytes) about to be written: kept by taking over w's buffer (w gets
 * a recycled one), or marked as a gap when the limit is reached (a resume past it fails): 1; 0 when resuming is
 * off (nothing is kept). */
int fgc_resume_keep_writer(const uint8_t *head, fg_writer *w, uint32_t seq);
/* Bytes kept unacknowledged; 1 when past half the limit (the next async call asks for a reply). */
size_t fgc_resume_kept_bytes(void);
int fgc_resume_keep_full(void);
/* A frame that cannot be sent again (a bulk copy's raw bytes follow it, bulk.c): a resume that would need it fails
 * (the session ends with an error) instead of sending it without its bytes. */
void fgc_resume_unkept(uint32_t seq);
/* A bulk copy's frame (bulk.c): kept as a call, resend(arg), that writes the frame again over the new connection
 * (with its bytes, or reading them: C = 1) while its caller still waits; the caller forgets it before it returns
 * (fgc_resume_forget_call) unless a reply acknowledged it. Returns 0 when resuming is off. */
int fgc_resume_keep_call(uint32_t seq, int (*resend)(void *), void *arg);
void fgc_resume_forget_call(uint32_t seq);
uint32_t fgc_resume_have(void); /* the seq of the last reply read */
int fgc_resume_on(void);        /* frames are kept: the session can resume */
int fgc_resume(const char *closing);
/* pool lease lookup (lease.c): the lease's current endpoint and token; 0 when known. */
int fgc_lease_where(char *endpoint, size_t ep_cap, char *token, size_t tok_cap);

#endif
