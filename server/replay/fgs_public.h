/* fgs_public.h — the replay engine's C API, called from Python (server/worker.py) through cffi.
 * Keep this header free of preprocessor logic: cffi's cdef reads it. */
typedef struct fgs_session fgs_session;

/* Open a session on the driver at driver_path (the real libcuda.so.1 or the simulated device).
 * vram_quota 0 means no quota. Returns NULL with err filled on failure. */
fgs_session *fgs_open(const char *driver_path, unsigned long long vram_quota, unsigned int max_frame, char *err,
                      unsigned long errlen);
/* Serve the client on fd until it disconnects (returns 0), ctl_fd becomes readable (the control side
 * wrote a reason; the client is sent a CLOSE frame with it; returns 1), or a protocol error (returns -1).
 * reason receives a human-readable cause. */
int fgs_serve(fgs_session *S, int fd, int ctl_fd, char *reason, unsigned long reason_len);
/* Forward what the device prints (the read end of a pipe the worker's stdout writes to) to the client as
 * OUTPUT frames before each reply. Returns 0 on success. */
int fgs_set_output(fgs_session *S, int fd);
/* The client's callback connection (host functions run on it), handed over by the node agent. Returns 0. */
int fgs_set_callback_fd(fgs_session *S, int fd);
/* Free everything the session holds on the device. */
void fgs_close(fgs_session *S);
unsigned long long fgs_vram_used(fgs_session *S);
/* Charge this session's VRAM to a lease's ledger shared with the lease's other sessions on this node (a memfd
 * laid out as ledger.c says; the session takes the descriptor over) in slot `slot`, the quota being the ledger's;
 * each created context is charged ctx_charge bytes. Returns 0, or -1 for a ledger that is not valid. */
int fgs_set_ledger(fgs_session *S, int fd, unsigned int slot, unsigned long long ctx_charge);
/* Paging (paging.c): statuses go to status_fd as lines; pool_fd is the node's host page pool (a memfd; -1: none,
 * the session takes it over), node_fd the node's resident ledger (-1: none) with this session's slot. */
int fgs_set_pager(fgs_session *S, int status_fd, int pool_fd, int node_fd, unsigned int node_slot);
/* The node's host page pool as driver memory instead (hostpool.c): n slabs, each a host-NUMA VMM allocation of
 * slab bytes exported as a POSIX descriptor (fds[i]; the session takes them over; slab i holds pool bytes
 * [i*slab, (i+1)*slab)). Call after fgs_set_pager. Returns 0, or -1. */
int fgs_pager_use_vmm_pool(fgs_session *S, const int *fds, unsigned int n, unsigned long long slab);
/* Makes one slab (run once per slab, in a process of its own): returns the descriptor and its length (bytes rounded
 * up to the allocation granularity). */
int fgs_host_pool_make(fgs_session *S, unsigned long long bytes, int numa, unsigned long long *len, char *why,
                       unsigned long why_len);
/* Control lines from the agent (close, pageout, pagein, grant, deny); 1: the session must close (why filled). */
int fgs_control_read(fgs_session *S, int ctl_fd, char *why, unsigned long why_len);
int fgs_close_pending(fgs_session *S, char *why, unsigned long why_len);
/* 0 resident, 1 paged to host memory, 2 paged to disk. */
int fgs_paging_state(fgs_session *S);
unsigned long long fgs_paged_bytes(fgs_session *S);
unsigned long long fgs_idle_ms(fgs_session *S);
/* Parking (park.c): rebuild a parked session from its state directory (written by a "park DIR" control line)
 * and its memory (a spill file, paged in by the first batch), before answering the client. 0, or -1 with err. */
int fgs_restore(fgs_session *S, const char *dir, const char *pages, char *err, unsigned long errlen);
/* The last batch the session applied (a resuming client sends again what came after it). */
unsigned int fgs_applied_seq(fgs_session *S);
/* Module globals a restore found at other addresses (copies to them are translated). */
unsigned long long fgs_moved_globals(fgs_session *S);
/* A co-located client's shared-memory region (a sealed memfd of size bytes; the session takes fd over): mapped
 * and registered with the driver (shm.c). Returns 0, or -1 with err filled (the client goes on without it). */
int fgs_shm_attach(fgs_session *S, int fd, unsigned long long size, char *err, unsigned long errlen);
/* An extra data connection of the session (striped bulk copies, bulk.c), handed over by the node agent.
 * Returns 0, or -1 (the caller closes fd). */
int fgs_add_data_fd(fgs_session *S, int fd);
/* Its HELLO_OK is written: the worker may now send on it unasked (async device→host copies a reply delivers over
 * the bulk path stripe over the data connections said ready so far, in order). */
void fgs_data_fd_ready(fgs_session *S, int fd);
/* A resuming client's new connection, handed over by the node agent (reattach.c): waits up to wait_ms for the serve
 * loop to let go of the old one; returns the seq to report as applied (then send HELLO_OK on fd and call
 * fgs_reattach_go), -1 refused (err filled; the session cannot resume), -2 not now (try again). have: the last
 * reply the client read. fgs_reattach_go(ok 0: HELLO_OK could not be sent; the fd is closed) lets the loop go on. */
long long fgs_reattach_offer(fgs_session *S, int fd, unsigned int have, int wait_ms, char *err, unsigned long err_len);
void fgs_reattach_go(fgs_session *S, int ok);
/* The module-scope variables an image (cubin, fatbin or PTX) defines, as parking lists them (global_names.c):
 * names separated by newlines into out; sm the device's compute capability (90). Returns how many, -1 (out holds
 * why the image cannot be listed) or -2 (out too small). */
long fgs_list_image_globals(const unsigned char *img, unsigned long long size, int sm, char *out,
                            unsigned long out_len);
/* The node's CUDA IPC broker (a SOCK_SEQPACKET socket, server/ipc_broker.py; the session takes it over): IPC
 * handles travel between the workers of one lease through it (ipc.c). Without it, IPC calls are refused. */
void fgs_set_ipc(fgs_session *S, int fd);
