/* profiler_decls.h — the two profiler-control calls the driver exports but cuda.h does not declare (they live in
 * the toolkit's cudaProfiler.h, which the runtime wheels do not ship). Parsed by codegen/headers.py with cuda.h,
 * so the stub can implement them; cuProfilerInitialize (deprecated) is left out. */
#include <cuda.h>

CUresult CUDAAPI cuProfilerStart(void);
CUresult CUDAAPI cuProfilerStop(void);
