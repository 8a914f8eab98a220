// The persistent recurrence kernels (algorithm and buffers: fused_rnn/persistent.h), their
// launch plans, and the macro that instantiates both for a cell's forward and backward step.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fused_rnn/cell_steps.h"
#include "fused_rnn/persistent.h"
#include "persistent_products.cuh"

namespace fused_rnn {
namespace persistent {

namespace cg = cooperative_groups;

inline __device__ int min_int(int64_t a, int64_t b) { return static_cast<int>(a < b ? a : b); }

// A load that bypasses L1 (__ldcg), for any storage type: other blocks wrote these values during
// this kernel, and L1 is not coherent across SMs. c10::Half and c10::BFloat16 load as their bits.
template <typename T>
__device__ T load_cg(const T* p) {
  if constexpr (sizeof(T) == 2) {
    const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    T value;
    memcpy(&value, &bits, sizeof(T));
    return value;
  } else {
    return __ldcg(p);
  }
}

// 16-byte loads each thread keeps in flight while staging. Staging is bound by L2 latency, not
// bandwidth: with one scalar load at a time a 64 x 512 float32 state took tens of microseconds
// per step; with 8 x 16 bytes in flight it is a few L2 round trips (docs/persistent.md).
constexpr int kStageLoadsInFlight = 8;

// Writes n consecutive elements (the flat index i0 of a [rows][cols] array) to shared memory
// with row stride `stride`, converted to the compute type.
template <typename acc_t, typename scalar_t>
__device__ void store_staged(acc_t* dst, int stride, int cols, int i0, const scalar_t* values,
                             int n) {
  int r = i0 / cols, k = i0 - r * cols;
  for (int j = 0; j < n; ++j) {
    dst[r * stride + k] = static_cast<acc_t>(values[j]);
    if (++k == cols) k = 0, ++r;
  }
}

// Copies `rows` rows of `cols` elements (contiguous in global memory) into shared memory as
// acc_t (the product's element type), row stride `stride`, and zeroes rows [rows, rows_pad).
// Every thread of the block must call this (the alignment branches are the same for all of them).
template <typename acc_t, typename scalar_t>
__device__ void stage_rows(acc_t* dst, int stride, const scalar_t* src, int cols, int rows,
                           int rows_pad) {
  constexpr int kPerVector = 16 / sizeof(scalar_t);  // elements per 16-byte load
  // No conversion and 16-byte aligned rows (the tensor-core product's layout): each loaded
  // vector is stored whole.
  const bool whole_vectors = std::is_same_v<acc_t, scalar_t> && cols % kPerVector == 0 &&
                             stride % kPerVector == 0;
  const int count = rows * cols;
  int vectors = 0;  // the first vectors * kPerVector elements go as 16-byte loads
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    vectors = count / kPerVector;
    const uint4* source = reinterpret_cast<const uint4*>(src);
    const int per_round = blockDim.x * kStageLoadsInFlight;  // vectors per round of the block
    for (int v0 = threadIdx.x; v0 < vectors; v0 += per_round) {
      uint4 loaded[kStageLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kStageLoadsInFlight; ++u) {
        const int v = v0 + u * blockDim.x;
        if (v < vectors) loaded[u] = __ldcg(source + v);
      }
#pragma unroll
      for (int u = 0; u < kStageLoadsInFlight; ++u) {
        const int v = v0 + u * blockDim.x;
        if (v < vectors && whole_vectors) {
          const int r = v * kPerVector / cols;
          *reinterpret_cast<uint4*>(dst + r * stride + (v * kPerVector - r * cols)) = loaded[u];
        } else if (v < vectors) {
          scalar_t values[kPerVector];
          memcpy(values, &loaded[u], sizeof(values));
          store_staged(dst, stride, cols, v * kPerVector, values, kPerVector);
        }
      }
    }
  }
  for (int i = vectors * kPerVector + threadIdx.x; i < count; i += blockDim.x) {
    const scalar_t value = load_cg(src + i);
    store_staged(dst, stride, cols, i, &value, 1);
  }
  for (int i = threadIdx.x; i < (rows_pad - rows) * cols; i += blockDim.x) {
    dst[(rows + i / cols) * stride + i % cols] = acc_t(0);
  }
}

// Copies columns [c0, c1) of `rows` rows of a [rows][ld] array in global memory (written by
// other blocks) into the same columns of shared memory (row stride `stride`) as smem_t; the
// other columns [0, cols) of those rows, and rows [rows, rows_pad), are zero. Scalar loads, a
// few in flight per thread: for the reset_before GRU's backward, which multiplies a window of
// d x_proj's columns by W.
template <typename smem_t, typename scalar_t>
__device__ void stage_window(smem_t* dst, int stride, const scalar_t* src, int64_t ld, int cols,
                             int c0, int c1, int rows, int rows_pad) {
#pragma unroll 4
  for (int i = threadIdx.x; i < rows_pad * cols; i += blockDim.x) {
    const int r = i / cols, k = i - r * cols;
    dst[r * stride + k] = r < rows && k >= c0 && k < c1 ? static_cast<smem_t>(load_cg(src + r * ld + k))
                                                        : smem_t(0);
  }
}

// out(b, r, Σ_k w_s[r][k] · x[b][k]) for every batch row b < B and every row r < rows_pad of
// w_s, where stage(b0, rows, rows_padded) puts rows [b0, b0 + rows) of x into x_s (room for
// `chunk` rows of stride `stride`) and zeroes its rows [rows, rows_padded): a chunk of rows at a
// time. Every thread of the block must call this; when it returns, every out() call of the
// block has been made.
template <class Product, typename smem_t, class Stage, class Out>
__device__ void multiply_staged_by(const smem_t* w_s, int rows_pad, int chunk, const smem_t* x_s,
                                   int stride, float* scratch, int B, int K, const Stage& stage,
                                   const Out& out) {
  for (int b0 = 0; b0 < B; b0 += chunk) {
    const int rows = min_int(chunk, B - b0);
    const int rows_padded = static_cast<int>(round_up(rows, Product::kBatchTile));
    __syncthreads();  // the previous chunk's products are done with x_s (and w_s is loaded)
    stage(b0, rows, rows_padded);
    __syncthreads();
    Product::dots(w_s, rows_pad, x_s, rows_padded, K, stride, scratch, [&](int r, int b, auto value) {
      if (b < rows) out(b0 + b, r, value);
    });
  }
  __syncthreads();
}

// multiply_staged_by with x = src [B, K] (global, row stride K).
template <class Product, typename smem_t, typename scalar_t, class Out>
__device__ void multiply_staged(const smem_t* w_s, int rows_pad, smem_t* x_s, int chunk,
                                int stride, float* scratch, const scalar_t* src, int B, int K,
                                const Out& out) {
  multiply_staged_by<Product>(w_s, rows_pad, chunk, x_s, stride, scratch, B, K,
                              [&](int b0, int rows, int rows_padded) {
                                stage_rows(x_s, stride, src + static_cast<int64_t>(b0) * K, K,
                                           rows, rows_padded);
                              },
                              out);
}

// Asks L1 for the bytes [p, p + bytes), ahead of their use: a hint that neither faults nor waits.
__device__ inline void prefetch_l1(const void* p, int bytes) {
  constexpr uintptr_t kLine = 128;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~(kLine - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  for (uintptr_t line = first; line < end; line += kLine) {
    asm volatile("prefetch.L1 [%0];" ::"l"(line));
  }
}

// The block's hidden units [u0, u0 + units).
struct BlockUnits {
  int u0, units;
  __device__ explicit BlockUnits(int64_t per_block, int64_t H)
      : u0(static_cast<int>(blockIdx.x * per_block)),
        units(min_int(per_block, H - blockIdx.x * per_block)) {}
};

// The forward's W slice: w_s row g*U + u = W_hh [G*H, H] row g*H + u0 + u, as smem_t, row
// stride `stride`, `columns` columns; rows of units past `own.units`, rows [G*U, rows_pad) and
// columns [H, columns) are zero.
template <typename smem_t, typename scalar_t>
__device__ void load_own_rows(smem_t* w_s, int stride, int rows_pad, int columns,
                              const scalar_t* w_hh, int H, int G, int U, const BlockUnits& own) {
  for (int i = threadIdx.x; i < rows_pad * columns; i += blockDim.x) {
    const int r = i / columns, k = i % columns, g = r / U, u = r % U;
    w_s[r * stride + k] = g < G && u < own.units && k < H
                              ? static_cast<smem_t>(w_hh[static_cast<int64_t>(g * H + own.u0 + u) * H + k])
                              : smem_t(0);
  }
}

// The backward's W slice: w_s row n = W_hh [K, H] column u0 + n, as smem_t, row stride
// `stride`, `columns` columns; rows of units past `own.units` and columns [K, columns) are zero.
template <typename smem_t, typename scalar_t>
__device__ void load_own_columns(smem_t* w_s, int stride, int rows_pad, int columns,
                                 const scalar_t* w_hh, int H, int K, const BlockUnits& own) {
  for (int i = threadIdx.x; i < rows_pad * columns; i += blockDim.x) {
    const int k = i / rows_pad, n = i % rows_pad;  // n fastest: neighbouring threads read neighbours
    w_s[n * stride + k] = n < own.units && k < K
                              ? static_cast<smem_t>(w_hh[static_cast<int64_t>(k) * H + own.u0 + n])
                              : smem_t(0);
  }
}

// Zeroes n elements of shared memory (the staging buffer once: staging never writes the columns
// past K that a product reads).
template <typename smem_t>
__device__ void zero_shared(smem_t* p, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = smem_t(0);
}

// Starts a step's input rows of the own units (x_proj [B, G*H], read-only in the kernels) on
// their way to L1, so that they arrive during the barrier instead of after it.
template <typename scalar_t>
__device__ void prefetch_own_inputs(const scalar_t* x_proj, int B, int G, int H,
                                    const BlockUnits& own) {
  for (int i = threadIdx.x; i < B * G; i += blockDim.x) {
    prefetch_l1(x_proj + static_cast<int64_t>(i) * H + own.u0, own.units * sizeof(scalar_t));
  }
}

template <class Step, class Product>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    forward_kernel(const PersistentForwardArgs<Step> a, const PersistentPlan plan) {
  using scalar_t = typename Step::scalar_type;
  using acc_t = at::opmath_type<scalar_t>;
  using smem_t = typename Product::smem_t;
  cg::grid_group grid = cg::this_grid();
  const int H = static_cast<int>(a.H), G = static_cast<int>(a.gates), B = static_cast<int>(a.B);
  const int U = static_cast<int>(plan.units), chunk = static_cast<int>(plan.batch_chunk);
  const BlockUnits own(U, H);
  const int rows_pad = static_cast<int>(round_up(G * U, Product::kRowTile));
  const int stride = static_cast<int>(Product::stride(H));
  extern __shared__ __align__(16) unsigned char shared_raw[];
  smem_t* w_s = reinterpret_cast<smem_t*>(shared_raw);  // [rows_pad][stride] row g*U+u = W_hh row g*H+u0+u
  smem_t* h_s = w_s + rows_pad * stride;                // [chunk][stride] rows of the state
  float* scratch = reinterpret_cast<float*>(h_s + chunk * stride);  // Product::kScratchBytes

  load_own_rows(w_s, stride, rows_pad, static_cast<int>(Product::columns(H)), a.w_hh, H, G, U, own);
  zero_shared(h_s, chunk * stride);
  Step step = a.steps[0];
  for (int64_t s = 0; s < a.T; ++s) {
    // Selected, not indexed: a dynamic index would copy the array into local memory.
    const scalar_t* h_cur = s % 2 == 0 ? a.state[0] : a.state[1];
    scalar_t* h_next = s % 2 == 0 ? a.state[1] : a.state[0];
    // The next step's struct, loaded now so that its latency hides behind this step's work.
    const Step next = a.steps[s + 1 < a.T ? s + 1 : s];
    multiply_staged<Product>(w_s, rows_pad, h_s, chunk, stride, scratch, h_cur, B, H,
                             [&](int b, int r, acc_t value) {
      const int g = r / U, u = r % U;
      if (g < G && u < own.units) {
        a.hh[static_cast<int64_t>(b) * G * H + g * H + own.u0 + u] = static_cast<scalar_t>(value);
      }
    });
    for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
      const int64_t k = static_cast<int64_t>(i / own.units) * H + own.u0 + i % own.units;
      h_next[k] = load_cg(h_cur + k);
      step(i / own.units, own.u0 + i % own.units);
    }
    prefetch_own_inputs(next.x_proj, B, G, H, own);
    grid.sync();
    step = next;
  }
}

// Elements each thread gathers per round from the other blocks' shared memory (latency bound,
// like staging from L2).
constexpr int kGatherInFlight = 4;

// The forward as one cluster (PersistentPlan::cluster, fused_rnn/persistent.h). Per step s:
//   x_s = h_s, gathered: own units from this block's h buffer, the others' from theirs (DSMEM)
//   hh_s[:, own rows] = x_s · W_ownᵀ          (shared memory; the steps read hh from there)
//   h_next[:, own] = h_cur[:, own]; steps[s](b, j) for own j with h and hh in shared memory
//   cluster barrier
// h ping-pongs between two shared buffers: step s reads buffer s % 2 (its own and, remotely, the
// others') and writes its own units of buffer (s + 1) % 2, which nobody reads before the barrier.
template <class Step>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    cluster_forward_kernel(const PersistentForwardArgs<Step> a, const PersistentPlan plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using scalar_t = typename Step::scalar_type;
  using acc_t = at::opmath_type<scalar_t>;
  cg::cluster_group cluster = cg::this_cluster();
  const int H = static_cast<int>(a.H), G = static_cast<int>(a.gates), B = static_cast<int>(a.B);
  const int U = static_cast<int>(plan.units);
  const int rank = static_cast<int>(cluster.block_rank());
  const BlockUnits own(U, H);  // the grid is one cluster: blockIdx.x is the rank
  const int rows_pad = static_cast<int>(round_up(G * U, kTileRows));
  const int batch_pad = static_cast<int>(round_up(B, kTileBatch));
  const int stride = H + 1;  // padded rows: neighbouring rows start in different banks
  extern __shared__ __align__(16) unsigned char shared_raw[];
  acc_t* w_s = reinterpret_cast<acc_t*>(shared_raw);  // [rows_pad][stride] row g*U+u = W_hh row g*H+u0+u
  acc_t* x_s = w_s + rows_pad * stride;                // [batch_pad][stride] h_s, gathered
  scalar_t* h_s[2];                                    // [B][H] each; only own units are written
  h_s[0] = reinterpret_cast<scalar_t*>(x_s + batch_pad * stride);
  h_s[1] = h_s[0] + B * H;
  scalar_t* hh_s = h_s[1] + B * H;                     // [B][G*H]; only own columns are written

  load_own_rows(w_s, stride, rows_pad, H, a.w_hh, H, G, U, own);
  for (int i = threadIdx.x; i < (batch_pad - B) * H; i += blockDim.x) {
    x_s[(B + i / H) * stride + i % H] = acc_t(0);  // padding rows, never gathered into
  }
  for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
    const int k = (i / own.units) * H + own.u0 + i % own.units;
    h_s[0][k] = a.state[0][k];  // h_0 of the own units
  }
  cluster.sync();  // every block's h_0 and W are in place

  Step step = a.steps[0];
  for (int64_t s = 0; s < a.T; ++s) {
    scalar_t* h_cur = s % 2 == 0 ? h_s[0] : h_s[1];
    scalar_t* h_next = s % 2 == 0 ? h_s[1] : h_s[0];
    const Step next = a.steps[s + 1 < a.T ? s + 1 : s];
    // Gather h_s: element i = (b, k) comes from the block that owns unit k.
    for (int i0 = threadIdx.x; i0 < B * H; i0 += blockDim.x * kGatherInFlight) {
      scalar_t values[kGatherInFlight];
#pragma unroll
      for (int n = 0; n < kGatherInFlight; ++n) {
        const int i = i0 + n * blockDim.x;
        if (i < B * H) {
          const int owner = (i % H) / U;
          const scalar_t* source = owner == rank ? h_cur : cluster.map_shared_rank(h_cur, owner);
          values[n] = source[i];
        }
      }
#pragma unroll
      for (int n = 0; n < kGatherInFlight; ++n) {
        const int i = i0 + n * blockDim.x;
        if (i < B * H) x_s[(i / H) * stride + i % H] = static_cast<acc_t>(values[n]);
      }
    }
    __syncthreads();
    tile_dots(w_s, rows_pad, x_s, batch_pad, H, stride, [&](int r, int b, acc_t value) {
      const int g = r / U, u = r % U;
      if (b < B && g < G && u < own.units) {
        hh_s[b * G * H + g * H + own.u0 + u] = static_cast<scalar_t>(value);
      }
    });
    __syncthreads();
    Step on_chip = step;  // the same step, with its state and hh in shared memory
    on_chip.h = h_next;
    on_chip.hh = hh_s;
    for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
      const int b = i / own.units, j = own.u0 + i % own.units;
      h_next[b * H + j] = h_cur[b * H + j];
      on_chip(b, j);
    }
    prefetch_own_inputs(next.x_proj, B, G, H, own);
    cluster.sync();  // h_next complete in every block; nobody reads h_cur any more
    step = next;
  }
  const scalar_t* h_last = a.T % 2 == 0 ? h_s[0] : h_s[1];
  for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
    const int k = (i / own.units) * H + own.u0 + i % own.units;
    a.state[0][k] = h_last[k];  // h_T; no block reads another's shared memory after the barrier
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // no clusters before sm_90; make_cluster_plan declines there, so never launched
#endif
}

template <class Step, class Product>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    backward_kernel(const PersistentBackwardArgs<Step> a, const PersistentPlan plan) {
  using scalar_t = typename Step::scalar_type;
  using acc_t = at::opmath_type<scalar_t>;
  using smem_t = typename Product::smem_t;
  cg::grid_group grid = cg::this_grid();
  const int H = static_cast<int>(a.H), B = static_cast<int>(a.B);
  const int K = static_cast<int>(a.gates * a.H);  // d_pre's row length
  const int U = static_cast<int>(plan.units), chunk = static_cast<int>(plan.batch_chunk);
  const BlockUnits own(U, H);
  const int rows_pad = static_cast<int>(round_up(U, Product::kRowTile));
  const int stride = static_cast<int>(Product::stride(K));
  const int columns = static_cast<int>(Product::columns(K));
  extern __shared__ __align__(16) unsigned char shared_raw[];
  smem_t* w_s = reinterpret_cast<smem_t*>(shared_raw);  // [rows_pad][stride] row n = W_hh column u0+n
  smem_t* d_s = w_s + rows_pad * stride;                // [chunk][stride] rows of d_pre_t
  float* scratch = reinterpret_cast<float*>(d_s + chunk * stride);  // Product::kScratchBytes

  load_own_columns(w_s, stride, rows_pad, columns, a.w_hh, H, K, own);
  zero_shared(d_s, chunk * stride);
  for (int64_t i = 0; i < a.T; ++i) {
    const Step step = a.steps[i];
    for (int e = threadIdx.x; e < B * own.units; e += blockDim.x) {
      step(e / own.units, own.u0 + e % own.units);
    }
    grid.sync();  // d_pre_t complete in every block
    const int64_t t = a.reverse ? i : a.T - 1 - i;
    multiply_staged<Product>(w_s, rows_pad, d_s, chunk, stride, scratch, a.d_pre + t * B * K, B, K,
                             [&](int b, int n, acc_t value) {
                      if (n < own.units) {
                        scalar_t* dh = a.dh + static_cast<int64_t>(b) * H + own.u0 + n;
                        *dh = static_cast<scalar_t>(static_cast<acc_t>(*dh) + value);
                      }
                    });
  }
}

// Whether `kernel` (one instantiated with a tensor-core product) has sm_80+ code to run here: a
// build for older GPUs only (a PTX JIT from compute_75, say) has an empty body.
inline bool tensor_cores_run(const void* kernel) {
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return false;
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  return attributes.binaryVersion >= 80 && attributes.ptxVersion >= 80;
}

// Units per block, shared-memory layout and residency for a kernel that keeps `rows_per_unit`
// rows of length K per hidden unit and stages batch rows of length K, with Product's layout.
template <class Product>
PersistentPlan make_plan(const void* kernel, int64_t B, int64_t H, int64_t rows_per_unit, int64_t K) {
  if (Product::kTensorCores && !tensor_cores_run(kernel)) return {};
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t sms = prop->multiProcessorCount;
  const int64_t units = persistent_units_per_block(H, sms);
  const int64_t row_bytes = Product::stride(K) * static_cast<int64_t>(sizeof(typename Product::smem_t));
  const int64_t w_bytes = round_up(rows_per_unit * units, Product::kRowTile) * row_bytes;
  const int64_t free_rows =
      (static_cast<int64_t>(prop->sharedMemPerBlockOptin) - w_bytes - Product::kScratchBytes) / row_bytes;
  const int64_t chunk_limit = free_rows / Product::kBatchTile * Product::kBatchTile;
  if (B < 1 || chunk_limit < Product::kBatchTile) return {};
  PersistentPlan plan;
  plan.units = units;
  plan.batch_chunk = std::min(round_up(B, Product::kBatchTile), chunk_limit);
  plan.shared_bytes = w_bytes + plan.batch_chunk * row_bytes + Product::kScratchBytes;
  plan.tensor_cores = Product::kTensorCores;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.shared_bytes)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, kPersistentThreads, static_cast<size_t>(plan.shared_bytes)));
  const int64_t blocks = ceil_div(H, units);
  if (per_sm * sms < blocks) return {};
  plan.blocks = blocks;
  return plan;
}

// A launch of `blocks` blocks that form one cluster; `attribute` must outlive the config.
inline cudaLaunchConfig_t cluster_config(int64_t blocks, int64_t shared_bytes,
                                         cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kPersistentThreads);
  config.dynamicSmemBytes = static_cast<size_t>(shared_bytes);
  config.stream = at::cuda::getCurrentCUDAStream();
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = static_cast<unsigned>(blocks);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// The cluster forward's plan (sm_90): one cluster of up to kMaxClusterBlocks blocks (fewer
// where the GPU cannot run that many with this much shared memory), and all of B, W's slice, the
// two h buffers and hh in each block's shared memory; blocks == 0 where that does not fit. The
// runtime's refusals of a cluster shape decline it rather than raise: the grid kernel runs then.
template <typename acc_t, typename scalar_t, class Kernel>
PersistentPlan make_cluster_plan(Kernel kernel, int64_t B, int64_t H, int64_t gates) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  if (prop->major < 9 || B < 1) return {};
  // The code the runtime would run must be sm_90's: built only for older architectures (a PTX
  // JIT from compute_80, say), the kernel's body is empty.
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.binaryVersion < 90 || attributes.ptxVersion < 90) return {};
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
      cudaSuccess) {
    (void)cudaGetLastError();  // no non-portable sizes here: 8 blocks at most
  }
  for (const int64_t most : {int64_t{kMaxClusterBlocks}, int64_t{8}}) {
    const int64_t units = ceil_div(H, most);
    const int64_t blocks = ceil_div(H, units);
    const int64_t shared_bytes =
        (round_up(gates * units, kTileRows) + round_up(B, kTileBatch)) * (H + 1) * sizeof(acc_t) +
        (2 * B * H + B * gates * H) * sizeof(scalar_t);
    if (shared_bytes > static_cast<int64_t>(prop->sharedMemPerBlockOptin)) return {};
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = cluster_config(blocks, shared_bytes, &attribute);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
      (void)cudaGetLastError();  // e.g. an unsupported cluster size: try a smaller one
      continue;
    }
    if (clusters < 1) continue;
    PersistentPlan plan;
    plan.blocks = blocks;
    plan.units = units;
    plan.batch_chunk = B;
    plan.shared_bytes = shared_bytes;
    plan.cluster = true;
    return plan;
  }
  return {};
}

template <class Kernel, class Args>
void launch(Kernel kernel, const Args& args, const PersistentPlan& plan) {
  if (plan.cluster) {
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = cluster_config(plan.blocks, plan.shared_bytes, &attribute);
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args, plan));
    return;
  }
  void* params[] = {const_cast<Args*>(&args), const_cast<PersistentPlan*>(&plan)};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(plan.blocks)),
      dim3(kPersistentThreads), params, static_cast<size_t>(plan.shared_bytes),
      at::cuda::getCurrentCUDAStream()));
}

// The plan of the kernel that kernel_of(Product{}) returns (as const void*), for the product
// `tensor_cores` names (blocks == 0 where they are asked for and scalar_t has none), keeping
// `rows_per_unit` rows of length K per hidden unit (make_plan).
template <typename scalar_t, class KernelOf>
PersistentPlan plan_for_product(bool tensor_cores, const KernelOf& kernel_of, int64_t B, int64_t H,
                                int64_t rows_per_unit, int64_t K) {
  if (tensor_cores && !kHasTensorCoreProduct<scalar_t>) return {};
  return with_product<scalar_t>(tensor_cores, [&](auto product) {
    return make_plan<decltype(product)>(kernel_of(product), B, H, rows_per_unit, K);
  });
}

}  // namespace persistent

template <class Step>
PersistentPlan plan_persistent_forward(int64_t B, int64_t H, int64_t gates, bool tensor_cores) {
  auto kernel_of = [](auto product) {
    return reinterpret_cast<const void*>(&persistent::forward_kernel<Step, decltype(product)>);
  };
  return persistent::plan_for_product<typename Step::scalar_type>(tensor_cores, kernel_of, B, H,
                                                                  gates, H);
}

template <class Step>
PersistentPlan plan_persistent_cluster_forward(int64_t B, int64_t H, int64_t gates) {
  using scalar_t = typename Step::scalar_type;
  return persistent::make_cluster_plan<at::opmath_type<scalar_t>, scalar_t>(
      &persistent::cluster_forward_kernel<Step>, B, H, gates);
}

template <class Step>
PersistentPlan plan_persistent_backward(int64_t B, int64_t H, int64_t gates, bool tensor_cores) {
  auto kernel_of = [](auto product) {
    return reinterpret_cast<const void*>(&persistent::backward_kernel<Step, decltype(product)>);
  };
  return persistent::plan_for_product<typename Step::scalar_type>(tensor_cores, kernel_of, B, H,
                                                                  1, gates * H);
}

template <class Step>
void launch_persistent_forward(const PersistentForwardArgs<Step>& args, const PersistentPlan& plan) {
  if (plan.cluster) return persistent::launch(&persistent::cluster_forward_kernel<Step>, args, plan);
  persistent::with_product<typename Step::scalar_type>(plan.tensor_cores, [&](auto product) {
    persistent::launch(&persistent::forward_kernel<Step, decltype(product)>, args, plan);
  });
}

template <class Step>
void launch_persistent_backward(const PersistentBackwardArgs<Step>& args,
                                const PersistentPlan& plan) {
  persistent::with_product<typename Step::scalar_type>(plan.tensor_cores, [&](auto product) {
    persistent::launch(&persistent::backward_kernel<Step, decltype(product)>, args, plan);
  });
}

}  // namespace fused_rnn

// Instantiates the persistent plans and launchers of one cell (forward and backward step
// templates) for every supported storage type.
#define FUSED_RNN_INSTANTIATE_PERSISTENT_FOR(Forward, Backward, scalar_t)                       \
  template fused_rnn::PersistentPlan fused_rnn::plan_persistent_forward<Forward<scalar_t>>(    \
      int64_t, int64_t, int64_t, bool);                                                         \
  template fused_rnn::PersistentPlan                                                          \
  fused_rnn::plan_persistent_cluster_forward<Forward<scalar_t>>(int64_t, int64_t, int64_t);    \
  template fused_rnn::PersistentPlan fused_rnn::plan_persistent_backward<Backward<scalar_t>>(  \
      int64_t, int64_t, int64_t, bool);                                                         \
  template void fused_rnn::launch_persistent_forward(                                           \
      const fused_rnn::PersistentForwardArgs<Forward<scalar_t>>&, const fused_rnn::PersistentPlan&); \
  template void fused_rnn::launch_persistent_backward(                                          \
      const fused_rnn::PersistentBackwardArgs<Backward<scalar_t>>&,                             \
      const fused_rnn::PersistentPlan&);

#define FUSED_RNN_INSTANTIATE_PERSISTENT(Forward, Backward)                         \
  FUSED_RNN_INSTANTIATE_PERSISTENT_FOR(fused_rnn::Forward, fused_rnn::Backward, float)  \
  FUSED_RNN_INSTANTIATE_PERSISTENT_FOR(fused_rnn::Forward, fused_rnn::Backward, double) \
  FUSED_RNN_INSTANTIATE_PERSISTENT_FOR(fused_rnn::Forward, fused_rnn::Backward, c10::Half) \
  FUSED_RNN_INSTANTIATE_PERSISTENT_FOR(fused_rnn::Forward, fused_rnn::Backward, c10::BFloat16)
