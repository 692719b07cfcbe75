/* fg_io.c — blocking socket I/O of an exact byte count (see fg_io.h). */
#include "fg_io.h"

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

int fg_io_full(int fd, void *p, size_t n, int writing) {
    uint8_t *b = (uint8_t *)p;
    while (n) {
        ssize_t k = writing ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}
