/* fg_io.h — blocking socket I/O of an exact byte count, shared by the stub and the replay engine, and reads
 * with deadlines: a peer may stay silent between messages as long as it likes, but once a message has begun,
 * every further byte must come within the I/O timeout (FARGPU_IO_TIMEOUT_S, default 30 s), so a frame that
 * promises more than it delivers cannot hold a connection forever. */
#ifndef FG_IO_H
#define FG_IO_H

#include <stddef.h>

/* Send (writing != 0) or receive exactly n bytes on a blocking socket, retrying on EINTR; no SIGPIPE.
 * Returns 0, or -1 when the peer closed or an error occurred. */
int fg_io_full(int fd, void *p, size_t n, int writing);

/* The progress deadline in milliseconds (FARGPU_IO_TIMEOUT_S; 0 or negative: none, -1 returned). */
int fg_io_timeout_ms(void);

/* Receive exactly n bytes: the first within first_ms, each later one within step_ms of the previous (-1: no
 * limit). Returns 0, -1 (closed or error) or -2 (a deadline passed); *got (may be NULL) = bytes received. */
int fg_io_read_deadline(int fd, void *p, size_t n, int first_ms, int step_ms, size_t *got);

/* Writes on fd fail once the peer has taken nothing for the I/O timeout (SO_SNDTIMEO): a peer that stopped
 * reading (paused, wedged) cannot hold a writer forever. */
void fg_io_send_deadline(int fd);

/* Busy-wait up to spin_us microseconds for fd to become readable (1), else 0: a thread about to block for a reply
 * that usually comes within a round trip saves the wake-up of a blocking wait (as the driver spins by default
 * while it waits for the GPU). fg_io_spin_us reads the window from env (default dflt, 0 turns it off). */
int fg_io_spin_readable(int fd, int spin_us);
int fg_io_spin_us(const char *env, int dflt);

#endif
