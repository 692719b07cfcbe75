/* profiler.c — cuProfilerStart / cuProfilerStop: sent to the node, which passes them to its driver when the
 * driver has them (a profiler attached to the node's worker sees the range) and otherwise ignores them. They
 * never fail: a program that brackets its work with them must run the same with no profiler attached, as it
 * does natively. */
#include "fgc_impl.h"
#include "fgc_internal.h"

static CUresult send(uint16_t op) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    return fgc_async();
}

CUresult fgc_cuProfilerStart(void) { return send(FG_OP_cuProfilerStart); }
CUresult fgc_cuProfilerStop(void) { return send(FG_OP_cuProfilerStop); }

