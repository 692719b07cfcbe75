/* fgc_tls.h — TLS for the stub's sockets (tls.c), through the system's OpenSSL 3 loaded at run time (dlopen of
 * libssl.so.3: the stub keeps no link-time dependency, and a machine without OpenSSL fails only when TLS is asked).
 *
 * A TLS connection is handed to the rest of the stub as one end of a socketpair; a relay thread per connection
 * moves bytes between it and the TLS session. So conn.c, bulk.c, callbacks.c and lease.c keep their plain
 * descriptor I/O (poll, sendmsg, deadlines) unchanged, and only the dialling knows about TLS.
 *
 * The server is verified against FARGPU_TLS_CA, else this machine's development CA ($XDG_STATE_HOME/fargpu/tls/
 * ca.pem, else ~/.local/state/fargpu/tls/ca.pem), else the system's CAs; its certificate must name the host dialled
 * (DNS name or IP address). TLS 1.2 at least. */
#ifndef FGC_TLS_H
#define FGC_TLS_H

#include <stddef.h>

/* 1 when ep is "tls://host:port" (*hostport then points at "host:port"; hostport may be NULL), else 0. */
int fgc_tls_endpoint(const char *ep, const char **hostport);

/* TLS over the connected TCP socket fd to host (a host name or IP address, "[v6]" allowed): the handshake within
 * the I/O timeout, then a relay thread. Returns the descriptor the caller uses from now on, or -1 with a one-line
 * reason in err (fd is closed either way; the returned one is closed by the caller as usual). */
int fgc_tls_wrap(int fd, const char *host, char *err, size_t errlen);

#endif
