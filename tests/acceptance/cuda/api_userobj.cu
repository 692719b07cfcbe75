// api_userobj.cu - acceptance: user objects (cudaUserObjectCreate, retain and release, references owned by a
// graph, moved into a graph, kept by an executable graph), whose destructor must run exactly once, with its
// pointer, only when the last reference is gone: not while the program, a graph or an executable still holds one.
// The destructor only counts (it may not call CUDA); the program waits for it a few seconds at most, since the
// driver runs it on an internal thread.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "acceptance.h"
#include "acceptance_check.h"

static std::atomic<int> g_ran{0};
static std::atomic<void *> g_last{nullptr};

static void destroy(void *p)
{
    g_last.store(p);
    g_ran.fetch_add(1);
}

static int wait_for(int n)
{
    CHECK(cudaDeviceSynchronize());
    for (int i = 0; i < 500 && g_ran.load() < n; i++)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return g_ran.load();
}

int main()
{
    CHECK(cudaSetDevice(0));
    int a = 1, b = 2;
    cudaUserObject_t obj;
    CHECK(cudaUserObjectCreate(&obj, &a, destroy, 1, cudaUserObjectNoDestructorSync));
    CHECK(cudaUserObjectRetain(obj, 2));
    CHECK(cudaUserObjectRelease(obj, 2));
    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    CHECK(cudaGraphRetainUserObject(g, obj, 1, 0));
    CHECK(cudaUserObjectRelease(obj, 1));
    cudaGraphNode_t n;
    CHECK(cudaGraphAddEmptyNode(&n, g, nullptr, 0));
    cudaGraphExec_t ex;
    CHECK(cudaGraphInstantiate(&ex, g, 0));
    CHECK(cudaGraphDestroy(g));
    check("alive while the program, a graph or an executable holds it", wait_for(0) == 0);
    CHECK(cudaGraphLaunch(ex, 0));
    CHECK(cudaGraphExecDestroy(ex));
    check("destructor after the executable went, with its pointer", wait_for(1) == 1 && g_last.load() == &a);

    cudaUserObject_t obj2;
    CHECK(cudaUserObjectCreate(&obj2, &b, destroy, 1, cudaUserObjectNoDestructorSync));
    cudaGraph_t g2;
    CHECK(cudaGraphCreate(&g2, 0));
    CHECK(cudaGraphRetainUserObject(g2, obj2, 1, cudaGraphUserObjectMove));
    check("a moved reference keeps it alive", wait_for(1) == 1);
    CHECK(cudaGraphReleaseUserObject(g2, obj2, 1));
    check("destructor after the graph released it", wait_for(2) == 2 && g_last.load() == &b);
    CHECK(cudaGraphDestroy(g2));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    check("each destructor ran once", g_ran.load() == 2);
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
