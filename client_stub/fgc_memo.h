/* fgc_memo.h — the stub's cache of unchanging answers and its call statistics (memo.c). */
#ifndef FGC_MEMO_H
#define FGC_MEMO_H

#include <stddef.h>
#include <stdint.h>

#include "fgc_internal.h"

int fgc_memo_lookup(const uint8_t *key, size_t klen, uint64_t ctx, const fgc_dest *outs, int n_outs);
void fgc_memo_store(const uint8_t *key, size_t klen, uint64_t ctx, const fgc_dest *outs, int n_outs);
void fgc_memo_clear(void);
void fgc_memo_forget_for(const uint8_t *setter_key, size_t klen);
void fgc_stats_sent(uint16_t op);
void fgc_stats_hit(uint16_t op);
uint64_t fgc_stats_sync_sent(void);

#endif
