/* proof.c — evidence that a client ran remotely. When FARGPU_PROOF_FILE is set, the stub writes, as the
 * process exits, every mapped file whose name contains "libcuda" or "nvidia" and every open /dev/nvidia*
 * descriptor. A GPU test passes only when the list shows the stub alone: the real driver was never
 * loaded and no GPU device node was ever opened by the client. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fgc_image.h"
#include "fgc_memo.h"

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
    fputc('"', f);
}

__attribute__((destructor)) static void fgc_write_proof(void) {
    const char *path = getenv("FARGPU_PROOF_FILE");
    if (!path || !*path) return;
    FILE *out = fopen(path, "a");
    if (!out) return;
    fprintf(out, "{\"pid\": %d, \"mapped\": [", (int)getpid());
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096], seen[128][512];
    int nseen = 0, first = 1;
    while (maps && fgets(line, sizeof line, maps)) {
        char *name = strchr(line, '/');
        if (!name) continue;
        name[strcspn(name, "\n")] = 0;
        if (!strstr(name, "libcuda") && !strstr(name, "nvidia")) continue;
        int dup = 0;
        for (int i = 0; i < nseen; i++) dup |= !strcmp(seen[i], name);
        if (dup || nseen == 128) continue;
        snprintf(seen[nseen++], sizeof seen[0], "%s", name);
        if (!first) fputs(", ", out);
        json_str(out, name);
        first = 0;
    }
    if (maps) fclose(maps);
    fputs("], \"nvidia_fds\": [", out);
    first = 1;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char link[300], target[512];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = 0;
        if (strncmp(target, "/dev/nvidia", 11)) continue;
        if (!first) fputs(", ", out);
        json_str(out, target);
        first = 0;
    }
    if (d) closedir(d);
    fprintf(out, "], \"image_bytes_sent\": %llu, \"sync_calls_sent\": %llu}\n",
            (unsigned long long)fgc_image_bytes_sent(), (unsigned long long)fgc_stats_sync_sent());
    fclose(out);
}
