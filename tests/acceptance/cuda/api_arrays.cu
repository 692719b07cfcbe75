// api_arrays.cu - acceptance: CUDA arrays (2D and 3D), copies into and out of them from host and device memory
// (whole, sub-regions with pitches wider than the rows, a 16 MiB 3D copy that needs splitting, an async 3D copy),
// the array descriptor, a mipmapped array with a level copied through, texture and surface objects on an array, on
// linear memory and on the mipmapped array, described back by the getters (a resource view too), and kernels that
// read a texture and write a surface. Every value is checked exactly against the host (integers in float).
// `--no-kernels` creates the objects but launches nothing (the simulated device in CI runs no texture kernel).
#include <cstdio>
#include <cstring>
#include <vector>

#include "acceptance.h"
#include "acceptance_check.h"

__global__ void tex_read(cudaTextureObject_t t, float *out, int w, int h)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
    if (x < w && y < h)
        out[y * w + x] = tex2D<float>(t, x + 0.5f, y + 0.5f) * 2.0f;
}

__global__ void surf_write(cudaSurfaceObject_t s, int w, int h)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
    if (x < w && y < h)
        surf2Dwrite((float)(1000 * y + x), s, x * (int)sizeof(float), y);
}

int main(int argc, char **argv)
{
    bool kernels = !(argc > 1 && std::strcmp(argv[1], "--no-kernels") == 0);
    CHECK(cudaSetDevice(0));
    const int W = 64, H = 32;
    cudaChannelFormatDesc fd = cudaCreateChannelDesc<float>();
    cudaArray_t arr;
    CHECK(cudaMallocArray(&arr, &fd, W, H, cudaArraySurfaceLoadStore));
    std::vector<float> img(W * H), back(W * H, -1.0f);
    for (int i = 0; i < W * H; i++)
        img[i] = (float)i;
    CHECK(cudaMemcpy2DToArray(arr, 0, 0, img.data(), W * sizeof(float), W * sizeof(float), H, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy2DFromArray(back.data(), W * sizeof(float), arr, 0, 0, W * sizeof(float), H,
                                cudaMemcpyDeviceToHost));
    check("host to array to host", back == img);

    // An 8x4 block from a host image 20 floats wide into the array at (4, 2), read back whole.
    std::vector<float> block(20 * 4);
    for (int i = 0; i < 20 * 4; i++)
        block[i] = -(float)i;
    CHECK(cudaMemcpy2DToArray(arr, 4 * sizeof(float), 2, block.data(), 20 * sizeof(float), 8 * sizeof(float), 4,
                              cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy2DFromArray(back.data(), W * sizeof(float), arr, 0, 0, W * sizeof(float), H,
                                cudaMemcpyDeviceToHost));
    bool ok = true;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            bool in = x >= 4 && x < 12 && y >= 2 && y < 6;
            ok = ok && back[y * W + x] == (in ? -(float)((y - 2) * 20 + (x - 4)) : (float)(y * W + x));
        }
    check("pitched sub-block into the array", ok);
    // Read a sub-block into a wider host image whose gaps keep their bytes.
    std::vector<float> wide(16 * 3, 7.0f);
    CHECK(cudaMemcpy2DFromArray(wide.data(), 16 * sizeof(float), arr, 10 * sizeof(float), 20, 6 * sizeof(float), 3,
                                cudaMemcpyDeviceToHost));
    ok = true;
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 16; x++)
            ok = ok && wide[y * 16 + x] == (x < 6 ? (float)((20 + y) * W + 10 + x) : 7.0f);
    check("sub-block out of the array keeps host gaps", ok);

    // Device memory to and from the array.
    float *dev;
    size_t dpitch;
    CHECK(cudaMallocPitch(&dev, &dpitch, W * sizeof(float), H));
    CHECK(cudaMemcpy2DFromArray(dev, dpitch, arr, 0, 0, W * sizeof(float), H, cudaMemcpyDeviceToDevice));
    CHECK(cudaMemcpy2D(back.data(), W * sizeof(float), dev, dpitch, W * sizeof(float), H, cudaMemcpyDeviceToHost));
    check("array to pitched device memory", back[0] == 0.0f && back[2 * W + 4] == -0.0f && back[2 * W + 5] == -1.0f);
    CHECK(cudaMemcpy2DToArray(arr, 0, 0, img.data(), W * sizeof(float), W * sizeof(float), H, cudaMemcpyHostToDevice));

    cudaChannelFormatDesc got_fd;
    cudaExtent ext;
    unsigned int flags = 0;
    CHECK(cudaArrayGetInfo(&got_fd, &ext, &flags, arr));
    std::printf("array info: %d bits x, kind %d, extent %zu x %zu x %zu\n", got_fd.x, (int)got_fd.f, ext.width,
                ext.height, ext.depth);

    // Texture on the array, surface on the array; kernels read and write through them.
    cudaResourceDesc rd;
    std::memset(&rd, 0, sizeof rd);
    rd.resType = cudaResourceTypeArray;
    rd.res.array.array = arr;
    cudaTextureDesc td;
    std::memset(&td, 0, sizeof td);
    td.addressMode[0] = td.addressMode[1] = cudaAddressModeClamp;
    td.filterMode = cudaFilterModePoint;
    td.readMode = cudaReadModeElementType;
    cudaTextureObject_t tex;
    CHECK(cudaCreateTextureObject(&tex, &rd, &td, nullptr));
    cudaSurfaceObject_t surf;
    CHECK(cudaCreateSurfaceObject(&surf, &rd));
    float *out;
    CHECK(cudaMalloc(&out, W * H * sizeof(float)));
    cudaResourceDesc lin;
    std::memset(&lin, 0, sizeof lin);
    lin.resType = cudaResourceTypeLinear;
    lin.res.linear.devPtr = out;
    lin.res.linear.desc = fd;
    lin.res.linear.sizeInBytes = W * H * sizeof(float);
    cudaTextureObject_t tex_lin;
    CHECK(cudaCreateTextureObject(&tex_lin, &lin, &td, nullptr));
    // The objects described back: the array (by the handle the program holds), the texture's modes, the linear
    // texture's memory, a resource view.
    cudaResourceDesc rd_back, sd_back, lin_back;
    std::memset(&rd_back, 0xff, sizeof rd_back);
    std::memset(&sd_back, 0xff, sizeof sd_back);
    std::memset(&lin_back, 0xff, sizeof lin_back);
    CHECK(cudaGetTextureObjectResourceDesc(&rd_back, tex));
    CHECK(cudaGetSurfaceObjectResourceDesc(&sd_back, surf));
    check("texture and surface resource descriptions name the array",
          rd_back.resType == cudaResourceTypeArray && rd_back.res.array.array == arr &&
              sd_back.resType == cudaResourceTypeArray && sd_back.res.array.array == arr);
    cudaTextureDesc td_back;
    std::memset(&td_back, 0xff, sizeof td_back);
    CHECK(cudaGetTextureObjectTextureDesc(&td_back, tex));
    check("texture description round trip",
          td_back.addressMode[0] == cudaAddressModeClamp && td_back.addressMode[1] == cudaAddressModeClamp &&
              td_back.filterMode == cudaFilterModePoint && td_back.readMode == cudaReadModeElementType &&
              td_back.normalizedCoords == 0);
    CHECK(cudaGetTextureObjectResourceDesc(&lin_back, tex_lin));
    check("linear texture description",
          lin_back.resType == cudaResourceTypeLinear && lin_back.res.linear.devPtr == out &&
              lin_back.res.linear.sizeInBytes == W * H * sizeof(float) && lin_back.res.linear.desc.x == 32 &&
              lin_back.res.linear.desc.f == cudaChannelFormatKindFloat);
    cudaResourceViewDesc vd;
    std::memset(&vd, 0, sizeof vd);
    vd.format = cudaResViewFormatFloat1;
    vd.width = W;
    vd.height = H;
    cudaTextureObject_t tex_view;
    cudaError_t vr = cudaCreateTextureObject(&tex_view, &rd, &td, &vd);
    std::printf("texture with a resource view: %s\n", cudaGetErrorName(vr));
    if (vr == cudaSuccess) {
        cudaResourceViewDesc vd_back;
        std::memset(&vd_back, 0xff, sizeof vd_back);
        CHECK(cudaGetTextureObjectResourceViewDesc(&vd_back, tex_view));
        check("resource view description round trip",
              vd_back.format == cudaResViewFormatFloat1 && vd_back.width == (size_t)W && vd_back.height == (size_t)H);
        CHECK(cudaDestroyTextureObject(tex_view));
    }
    if (kernels) {
        tex_read<<<dim3(1, H), W>>>(tex, out, W, H);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpy(back.data(), out, W * H * sizeof(float), cudaMemcpyDeviceToHost));
        ok = true;
        for (int i = 0; i < W * H; i++)
            ok = ok && back[i] == 2.0f * (float)i;
        check("kernel reads the texture", ok);
        surf_write<<<dim3(1, H), W>>>(surf, W, H);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpy2DFromArray(back.data(), W * sizeof(float), arr, 0, 0, W * sizeof(float), H,
                                    cudaMemcpyDeviceToHost));
        ok = true;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                ok = ok && back[y * W + x] == (float)(1000 * y + x);
        check("kernel writes the surface", ok);
    }
    CHECK(cudaDestroyTextureObject(tex_lin));
    CHECK(cudaDestroyTextureObject(tex));
    CHECK(cudaDestroySurfaceObject(surf));

    // 3D: host -> 3D array -> pitched device memory -> host; 256 x 256 x 64 floats (16 MiB) needs splitting.
    const int X = 256, Y = 256, Z = 64;
    cudaArray_t arr3;
    CHECK(cudaMalloc3DArray(&arr3, &fd, make_cudaExtent(X, Y, Z)));
    std::vector<float> vol((size_t)X * Y * Z), vback((size_t)X * Y * Z, 0.0f);
    for (size_t i = 0; i < vol.size(); i++)
        vol[i] = (float)(i % 1000003);
    cudaMemcpy3DParms p;
    std::memset(&p, 0, sizeof p);
    p.srcPtr = make_cudaPitchedPtr(vol.data(), X * sizeof(float), X, Y);
    p.dstArray = arr3;
    p.extent = make_cudaExtent(X, Y, Z);
    p.kind = cudaMemcpyHostToDevice;
    CHECK(cudaMemcpy3D(&p));
    cudaPitchedPtr dvol;
    CHECK(cudaMalloc3D(&dvol, make_cudaExtent(X * sizeof(float), Y, Z)));
    std::memset(&p, 0, sizeof p);
    p.srcArray = arr3;
    p.dstPtr = dvol;
    p.extent = make_cudaExtent(X, Y, Z);
    p.kind = cudaMemcpyDeviceToDevice;
    CHECK(cudaMemcpy3D(&p));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    std::memset(&p, 0, sizeof p);
    p.srcPtr = dvol;
    p.dstPtr = make_cudaPitchedPtr(vback.data(), X * sizeof(float), X, Y);
    p.extent = make_cudaExtent(X * sizeof(float), Y, Z);
    p.kind = cudaMemcpyDeviceToHost;
    CHECK(cudaMemcpy3DAsync(&p, s));
    CHECK(cudaStreamSynchronize(s));
    check("16 MiB through a 3D array and pitched device memory", vback == vol);
    // A 3D sub-box out of the array into host memory.
    std::vector<float> box(4 * 3 * 2, -5.0f);
    std::memset(&p, 0, sizeof p);
    p.srcArray = arr3;
    p.srcPos = make_cudaPos(10, 20, 30);
    p.dstPtr = make_cudaPitchedPtr(box.data(), 4 * sizeof(float), 4, 3);
    p.extent = make_cudaExtent(4, 3, 2);
    p.kind = cudaMemcpyDeviceToHost;
    CHECK(cudaMemcpy3D(&p));
    ok = true;
    for (int z = 0; z < 2; z++)
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 4; x++)
                ok = ok && box[(z * 3 + y) * 4 + x] == vol[((size_t)(30 + z) * Y + (20 + y)) * X + 10 + x];
    check("3D sub-box out of the array", ok);

    // A mipmapped array: level 1 of a 16x16 float image is 8x8; a texture on the whole pyramid.
    cudaMipmappedArray_t mip;
    CHECK(cudaMallocMipmappedArray(&mip, &fd, make_cudaExtent(16, 16, 0), 3));
    cudaArray_t lvl;
    CHECK(cudaGetMipmappedArrayLevel(&lvl, mip, 1));
    CHECK(cudaArrayGetInfo(&got_fd, &ext, &flags, lvl));
    std::printf("mip level 1: extent %zu x %zu\n", ext.width, ext.height);
    std::vector<float> l1(64), l1b(64, 0.0f);
    for (int i = 0; i < 64; i++)
        l1[i] = (float)(3 * i);
    CHECK(cudaMemcpy2DToArray(lvl, 0, 0, l1.data(), 8 * sizeof(float), 8 * sizeof(float), 8, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy2DFromArray(l1b.data(), 8 * sizeof(float), lvl, 0, 0, 8 * sizeof(float), 8, cudaMemcpyDeviceToHost));
    check("mipmap level round trip", l1b == l1);
    cudaResourceDesc mrd;
    std::memset(&mrd, 0, sizeof mrd);
    mrd.resType = cudaResourceTypeMipmappedArray;
    mrd.res.mipmap.mipmap = mip;
    td.mipmapFilterMode = cudaFilterModePoint;
    td.maxMipmapLevelClamp = 2.0f;
    cudaTextureObject_t mtex;
    CHECK(cudaCreateTextureObject(&mtex, &mrd, &td, nullptr));
    cudaResourceDesc mrd_back;
    std::memset(&mrd_back, 0xff, sizeof mrd_back);
    CHECK(cudaGetTextureObjectResourceDesc(&mrd_back, mtex));
    check("mipmapped texture description names the mipmapped array",
          mrd_back.resType == cudaResourceTypeMipmappedArray && mrd_back.res.mipmap.mipmap == mip);
    CHECK(cudaDestroyTextureObject(mtex));
    CHECK(cudaFreeMipmappedArray(mip));

    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(dvol.ptr));
    CHECK(cudaFreeArray(arr3));
    CHECK(cudaFree(out));
    CHECK(cudaFree(dev));
    CHECK(cudaFreeArray(arr));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
