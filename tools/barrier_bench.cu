// What one barrier costs on this GPU: a grid-wide barrier (cooperative groups' grid.sync) by the
// number of blocks, and a thread-block-cluster barrier by the cluster size. A persistent
// recurrence pays one of these every step (docs/persistent.md), so they are its floor.
// Prints one JSON object, in microseconds per barrier.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -o barrier_bench tools/barrier_bench.cu
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace cg = cooperative_groups;

#define CHECK(call)                                                                   \
  do {                                                                                \
    const cudaError_t status = (call);                                                \
    if (status != cudaSuccess) {                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call,             \
                   cudaGetErrorString(status));                                       \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

constexpr int kThreads = 256;  // as the persistent kernels

__global__ void grid_barriers(int rounds, int* arrivals) {
  cg::grid_group grid = cg::this_grid();
  for (int i = 0; i < rounds; ++i) grid.sync();
  if (threadIdx.x == 0) atomicAdd(arrivals, 1);
}

__global__ void cluster_barriers(int rounds, int* arrivals) {
  cg::cluster_group cluster = cg::this_cluster();
  for (int i = 0; i < rounds; ++i) cluster.sync();
  if (threadIdx.x == 0) atomicAdd(arrivals, 1);
}

// Milliseconds of one launch of `launch(rounds)`, the median of 5.
template <class Launch>
float time_launch(Launch launch, int rounds) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  float times[5];
  for (float& t : times) {
    CHECK(cudaEventRecord(start));
    launch(rounds);
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    CHECK(cudaEventElapsedTime(&t, start, stop));
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  for (int i = 0; i < 5; ++i)
    for (int j = i + 1; j < 5; ++j)
      if (times[j] < times[i]) std::swap(times[i], times[j]);
  return times[2];
}

// Microseconds per barrier: the difference of a long and a short run, so launch cost cancels.
template <class Launch>
double per_barrier_us(Launch launch) {
  constexpr int kLong = 20000, kShort = 1000;
  launch(10);  // warm-up
  CHECK(cudaDeviceSynchronize());
  const float long_ms = time_launch(launch, kLong), short_ms = time_launch(launch, kShort);
  return (long_ms - short_ms) * 1000.0 / (kLong - kShort);
}

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  int* arrivals = nullptr;
  CHECK(cudaMalloc(&arrivals, sizeof(int)));
  std::printf("{\"gpu\": \"%s\", \"multiprocessors\": %d, \"threads_per_block\": %d,\n", prop.name,
              prop.multiProcessorCount, kThreads);

  std::printf(" \"grid_sync_us\": {");
  const int grid_sizes[] = {8, 16, 32, 64, 128, prop.multiProcessorCount};
  for (int n = 0; n < 6; ++n) {
    const int blocks = grid_sizes[n];
    auto launch = [&](int rounds) {
      void* args[] = {&rounds, &arrivals};
      CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(grid_barriers), dim3(blocks),
                                        dim3(kThreads), args, 0, nullptr));
    };
    std::printf("%s\"%d\": %.3f", n ? ", " : "", blocks, per_barrier_us(launch));
  }
  std::printf("},\n");

  // One cluster alone on the GPU; 16 is past the portable size and must be allowed explicitly.
  CHECK(cudaFuncSetAttribute(cluster_barriers, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  std::printf(" \"cluster_sync_us\": {");
  const int cluster_sizes[] = {2, 4, 8, 16};
  for (int n = 0; n < 4; ++n) {
    const int size = cluster_sizes[n];
    auto launch = [&](int rounds) {
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(size);
      config.blockDim = dim3(kThreads);
      cudaLaunchAttribute attribute;
      attribute.id = cudaLaunchAttributeClusterDimension;
      attribute.val.clusterDim.x = size;
      attribute.val.clusterDim.y = 1;
      attribute.val.clusterDim.z = 1;
      config.attrs = &attribute;
      config.numAttrs = 1;
      CHECK(cudaLaunchKernelEx(&config, cluster_barriers, rounds, arrivals));
    };
    std::printf("%s\"%d\": %.3f", n ? ", " : "", size, per_barrier_us(launch));
  }
  std::printf("}}\n");
  CHECK(cudaFree(arrivals));
  return 0;
}
