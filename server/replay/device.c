/* device.c — cuDeviceGetAttribute for the client. The stub overrides the memory-sharing attributes it cannot
 * give remotely (client_stub/device_attrs.c); the node answers as its driver does. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

CUresult fgs_cuDeviceGetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint8_t want = 0;
    CUdevice_attribute attrib;
    CUdevice dev;
    fg_get(r, &want, 1);
    fg_get(r, &attrib, sizeof attrib);
    fg_get(r, &dev, sizeof dev);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    int v = 0;
    CUresult res = S->api->cuDeviceGetAttribute(want ? &v : NULL, attrib, dev);
    if (res == CUDA_SUCCESS) fg_put(out, &v, sizeof v);
    return res;
}
