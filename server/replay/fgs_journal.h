/* fgs_journal.h — the creation journal's entries, shared by journal.c (which records them) and park.c (which
 * writes them to a park store and replays them into a new worker). */
#ifndef FGS_JOURNAL_H
#define FGS_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint16_t op;
    int dead;               /* what it made was destroyed: left out of a park */
    uint64_t ctx;           /* the context current when it ran (its virtual id; 0: none) */
    uint64_t *ids;          /* the ids it handed out (new or existing), in order */
    uint32_t n_ids;
    uint64_t *deps;         /* live ids named in its arguments: destroying one drops the entry */
    uint32_t n_deps;
    uint8_t *args;          /* the record's arguments, as the client sent them */
    uint32_t arglen;
    uint8_t *outb;          /* what it answered (kept for module globals: their addresses) */
    uint32_t outlen;
    const uint8_t *image;   /* a module or library load: its image (owned by the session's image list) */
    uint64_t image_size;
} fgs_jentry;

/* An event's state across a park (park_events.c), by its table slot. */
typedef struct {
    uint8_t recorded; /* recorded since it was created */
    uint8_t timed;    /* restored and not recorded since: cuEventElapsedTime answers from ms against ref */
    uint64_t ref;
    float ms;
} fgs_evstate;

struct fgs_journal {
    fgs_jentry *e;
    size_t n, cap, n_dead;
    uint64_t *pending;      /* ids handed out by the op being dispatched */
    size_t n_pending, cap_pending;
    int incomplete;         /* an entry could not be kept (out of memory): the session cannot be parked */
    /* restoring (park.c): the ids the replayed op must hand out, in order */
    int restoring;
    const uint64_t *forced;
    uint32_t n_forced, forced_at;
    int forced_bad;
    /* module globals that came back at other addresses (park.c translates copies to them) */
    struct { uint64_t old, now, size; } *moves;
    size_t n_moves;
    fgs_evstate *ev; /* park_events.c */
    size_t n_ev;
};

int fgs_journal_is_load(unsigned op);
int fgs_journal_is_global(unsigned op);
/* Appends an entry made elsewhere (park.c, restoring): the journal takes over its buffers. 0 or -1. */
int fgs_journal_append(struct fgs_journal *J, const fgs_jentry *e);

#endif
