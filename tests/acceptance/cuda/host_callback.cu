// host_callback.cu - acceptance: host functions in stream order (cudaLaunchHostFunc and the older
// cudaStreamAddCallback). Each callback takes a ticket from an order counter and checks what it can see:
// the device result of the kernel before it (copied into pinned memory just before the callback), and it
// writes a value that the next copy and kernel must consume (so the callback must run before them). The fed
// block is 64 KiB, so no driver may treat the copy as a small inline transfer.
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "acceptance.h"

#define FEED 16384

static std::atomic<int> g_ticket{0};

struct Step {
    int index;          // which callback this is
    const int *seen;    // pinned host word the preceding D2H copy filled
    int *feed;          // pinned host block (FEED ints) the following H2D copy reads
    int ticket;         // order in which the callback ran (1-based)
    int value;          // what it saw in *seen
    cudaError_t status; // for cudaStreamAddCallback
};

__global__ void bump(int *counter, const int *add)
{
    if (threadIdx.x == 0 && blockIdx.x == 0)
        *counter += 1 + (add[0] + add[FEED - 1]) / 2;
}

static void CUDART_CB host_fn(void *p)
{
    Step *s = (Step *)p;
    s->ticket = ++g_ticket;
    s->value = *s->seen;
    s->feed[0] = s->feed[FEED - 1] = 100 * (s->index + 1);
}

static void CUDART_CB stream_cb(cudaStream_t, cudaError_t status, void *p)
{
    Step *s = (Step *)p;
    s->status = status;
    host_fn(p);
}

int main()
{
    const int steps = 8;
    int *d_counter, *d_add, *h_seen, *h_feed;
    Step st[steps];
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaMalloc(&d_counter, sizeof(int)));
    CHECK(cudaMalloc(&d_add, FEED * sizeof(int)));
    CHECK(cudaMallocHost(&h_seen, steps * sizeof(int)));
    CHECK(cudaMallocHost(&h_feed, (size_t)(steps + 1) * FEED * sizeof(int)));
    CHECK(cudaMemset(d_counter, 0, sizeof(int)));
    for (int i = 0; i < (steps + 1) * FEED; i++)
        h_feed[i] = i < FEED ? 0 : -1;
    // Per step: copy feed block i in, kernel counter += 1 + its value, copy counter out to seen[i], callback i
    // (reads seen[i], writes feed block i + 1 for the next step's copy).
    for (int i = 0; i < steps; i++) {
        st[i] = Step{i, &h_seen[i], &h_feed[(i + 1) * FEED], 0, -1, cudaErrorUnknown};
        CHECK(cudaMemcpyAsync(d_add, &h_feed[i * FEED], FEED * sizeof(int), cudaMemcpyHostToDevice, s));
        bump<<<1, 32, 0, s>>>(d_counter, d_add);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpyAsync(&h_seen[i], d_counter, sizeof(int), cudaMemcpyDeviceToHost, s));
        if (i % 2 == 0)
            CHECK(cudaLaunchHostFunc(s, host_fn, &st[i]));
        else
            CHECK(cudaStreamAddCallback(s, stream_cb, &st[i], 0));
    }
    CHECK(cudaStreamSynchronize(s));
    int after_sync = ++g_ticket;
    int bad = 0, expect = 0;
    for (int i = 0; i < steps; i++) {
        expect += 1 + (i == 0 ? 0 : 100 * i);  // the kernel added what callback i-1 fed it
        bool ok = st[i].ticket == i + 1 && st[i].value == expect && (i % 2 == 0 || st[i].status == cudaSuccess);
        bad += !ok;
        std::printf("callback %d (%s): ticket %d saw %d expected %d%s\n", i,
                    i % 2 == 0 ? "cudaLaunchHostFunc" : "cudaStreamAddCallback", st[i].ticket, st[i].value, expect,
                    ok ? "" : "  <-- out of stream order");
    }
    int final_counter = 0;
    CHECK(cudaMemcpy(&final_counter, d_counter, sizeof(int), cudaMemcpyDeviceToHost));
    int last_feed = h_feed[steps * FEED];
    std::printf("host after sync: ticket %d, counter %d, last feed %d\n", after_sync, final_counter, last_feed);
    bad += after_sync != steps + 1 || final_counter != expect || last_feed != 100 * steps;
    CHECK(cudaFreeHost(h_seen));
    CHECK(cudaFreeHost(h_feed));
    CHECK(cudaFree(d_counter));
    CHECK(cudaFree(d_add));
    CHECK(cudaStreamDestroy(s));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
