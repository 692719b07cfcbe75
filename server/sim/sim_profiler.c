/* sim_profiler.c - cuProfilerStart / cuProfilerStop on the simulated device: there is no profiler to attach,
 * so, as the driver does with none attached, they succeed once the driver is initialised. */
#include "sim.h"

SIM_API CUresult cuProfilerStart(void) { return sim_check_init(); }
SIM_API CUresult cuProfilerStop(void) { return sim_check_init(); }
