/* sim_launch_log.c - the launch record. When FARGPU_SIM_LAUNCH_LOG names a file, every validated launch
 * appends one JSON line to it:
 *   {"func": "fg_vadd", "grid": [x,y,z], "block": [x,y,z], "shmem": n, "stream": id,
 *    "params": "<hex of the packed parameter buffer>", "result": "CUDA_SUCCESS"}
 * "params" is the buffer laid out at the function's parameter offsets (padding bytes zero for kernelParams,
 * as given for `extra`). "stream" is 0 for the NULL/legacy stream, -1 for per-thread, else the creation order
 * of the stream in this process (so it is the same from run to run). "result" is what the launch returned.
 * Each line is written with one write() on an O_APPEND descriptor, so concurrent writers do not interleave. */
#include "sim.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Appends s to the buffer as a JSON string body (escaping anything outside printable ASCII). */
static size_t json_str(char *out, size_t cap, size_t pos, const char *s)
{
    for (; *s && pos + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            pos += (size_t)snprintf(out + pos, cap - pos, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
        else
            out[pos++] = (char)c;
    }
    return pos;
}

void sim_launch_log(const struct sim_launch *l, long long stream_id, CUresult result)
{
    const char *path = getenv("FARGPU_SIM_LAUNCH_LOG");
    if (!path || !*path)
        return;
    size_t cap = 1024 + 6 * strlen(l->f->name) + 2 * (size_t)l->f->param_bytes;
    char *line = malloc(cap);
    if (!line)
        return;
    size_t pos = (size_t)snprintf(line, cap, "{\"func\": \"");
    pos = json_str(line, cap, pos, l->f->name);
    pos += (size_t)snprintf(line + pos, cap - pos,
                            "\", \"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], \"shmem\": %u, \"stream\": %lld, "
                            "\"params\": \"",
                            l->grid[0], l->grid[1], l->grid[2], l->block[0], l->block[1], l->block[2], l->shmem,
                            stream_id);
    static const char hex[] = "0123456789abcdef";
    for (uint32_t i = 0; i < l->f->param_bytes; i++) {
        line[pos++] = hex[l->params[i] >> 4];
        line[pos++] = hex[l->params[i] & 15];
    }
    const char *rname = NULL;
    cuGetErrorName(result, &rname);
    pos += (size_t)snprintf(line + pos, cap - pos, "\", \"result\": \"%s\"}\n", rname ? rname : "?");
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, pos);
        (void)w;
        close(fd);
    } else {
        sim_log_once("FARGPU_SIM_LAUNCH_LOG", "cannot open the launch log for appending");
    }
    free(line);
}
