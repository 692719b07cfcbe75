/* fg_io.h — blocking socket I/O of an exact byte count, shared by the stub and the replay engine. */
#ifndef FG_IO_H
#define FG_IO_H

#include <stddef.h>

/* Send (writing != 0) or receive exactly n bytes on a blocking socket, retrying on EINTR; no SIGPIPE.
 * Returns 0, or -1 when the peer closed or an error occurred. */
int fg_io_full(int fd, void *p, size_t n, int writing);

#endif
