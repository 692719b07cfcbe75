/* fg_tls.h — TLS through the system's OpenSSL 3 loaded at run time (dlopen of libssl.so.3, no OpenSSL headers or
 * link-time dependency), shared by the stub (client side, client_stub/tls.c) and the node agent (server side,
 * libfargpu_tls.so through ctypes, server/tls.py): contexts, a handshake with a deadline on a non-blocking socket,
 * and the relay that moves bytes between a TLS session and a plaintext socketpair end. */
#ifndef FG_TLS_H
#define FG_TLS_H

#include <stddef.h>

/* A client context verifying servers against ca_file ("" or NULL: the system's CAs); TLS 1.2 at least. NULL with
 * a one-line reason in err when OpenSSL cannot be loaded or the CA file read. */
void *fg_tls_client_ctx(const char *ca_file, char *err, size_t errlen);
/* A server context with the certificate chain and key (PEM files; /proc/self/fd/N paths work). */
void *fg_tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* The handshake on the connected socket fd (made non-blocking) within timeout_ms. Client side: host is the name or
 * IP address the server's certificate must name. Returns the session, or NULL with the reason in err (fd is left
 * open to the caller). */
void *fg_tls_handshake(void *ctx, int fd, const char *host, int server, int timeout_ms, char *err, size_t errlen);

/* Relays between the session on net and the plaintext socket plain until either side ends (what is buffered toward
 * the other side is delivered first; a close of plain sends close_notify). Blocking; closes both and frees the
 * session. SIGPIPE is blocked in the calling thread. */
void fg_tls_relay(void *ssl, int net, int plain);

/* Server side in one blocking call: handshake, then relay (both descriptors are closed at the end either way).
 * 0 when the session ran, -1 when the handshake failed (reason in err). */
int fg_tls_serve(void *ctx, int net, int plain, int timeout_ms, char *err, size_t errlen);

#endif
