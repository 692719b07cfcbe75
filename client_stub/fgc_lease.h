/* fgc_lease.h — leasing from the pool manager when only FARGPU_POOL_URL is set (lease.c). */
#ifndef FGC_LEASE_H
#define FGC_LEASE_H
#include <stddef.h>
int fgc_lease_from_pool(const char *url, char *endpoint, size_t ep_cap, char *token, size_t tok_cap);
#endif
