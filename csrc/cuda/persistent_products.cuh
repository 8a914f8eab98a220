// How the persistent kernels (persistent.cuh) multiply the W_hh slice a block keeps in shared
// memory by the rows of h (backward: d_pre) staged next to it. A product fixes the element type
// and row layout of both shared copies and the dot-product routine; the kernels take it as a
// template argument:
//   FfmaProduct  exact FFMA in the compute type (float for half types, double for double) from
//                copies in that type. float32 and float64, and half types where the MMA plan
//                does not fit or FUSED_RNN_PERSISTENT_MMA=0 (sequence/persistent_loop.h).
//   MmaProduct   tensor cores (mma.sync m16n8k16, sm_80+), float16/bfloat16 only: W and h stay
//                in the storage type (half the shared memory), products add up in float. The
//                default for half types (the GPU runs behind it: docs/persistent.md).
// Both compute, for every r < rows_pad and b < batch_pad (multiples of the product's tiles),
//   out(r, b, Σ_k a[r][k] · x[b][k]),  a [rows_pad][stride], x [batch_pad][stride], k < K,
// where every thread of the block calls them, and columns [K, columns(K)) of both are zero.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "fused_rnn/persistent.h"

namespace fused_rnn {
namespace persistent {

inline __host__ __device__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline __host__ __device__ int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A group of `lanes` threads (a power of two up to a warp) computes one kTileRows × kTileBatch
// tile: each lane takes every lanes-th k, then warp shuffles add the lanes' partial sums. Small
// problems (few tiles) so still use the whole block.
template <typename acc_t, class Out>
__device__ void tile_dots(const acc_t* a, int rows_pad, const acc_t* x, int batch_pad, int K,
                          int stride, const Out& out) {
  const int row_tiles = rows_pad / kTileRows;
  const int tiles = row_tiles * (batch_pad / kTileBatch);
  int lanes = 32;
  while (lanes > 1 && tiles * lanes > static_cast<int>(blockDim.x)) lanes /= 2;
  const int groups = blockDim.x / lanes;
  const int group = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  // The same number of rounds for every thread, so that whole warps reach the shuffles.
  for (int first = 0; first < tiles; first += groups) {
    const int tile = first + group;
    const bool active = tile < tiles;
    const int r0 = active ? (tile % row_tiles) * kTileRows : 0;
    const int b0 = active ? (tile / row_tiles) * kTileBatch : 0;
    acc_t acc[kTileRows][kTileBatch];
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
#pragma unroll
      for (int j = 0; j < kTileBatch; ++j) acc[i][j] = acc_t(0);
    }
    if (active) {
      for (int k = lane; k < K; k += lanes) {
        acc_t av[kTileRows], xv[kTileBatch];
#pragma unroll
        for (int i = 0; i < kTileRows; ++i) av[i] = a[(r0 + i) * stride + k];
#pragma unroll
        for (int j = 0; j < kTileBatch; ++j) xv[j] = x[(b0 + j) * stride + k];
#pragma unroll
        for (int i = 0; i < kTileRows; ++i) {
#pragma unroll
          for (int j = 0; j < kTileBatch; ++j) acc[i][j] += av[i] * xv[j];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
#pragma unroll
      for (int j = 0; j < kTileBatch; ++j) {
        for (int offset = lanes / 2; offset > 0; offset /= 2) {
          acc[i][j] += __shfl_xor_sync(0xffffffffu, acc[i][j], offset);
        }
      }
    }
    if (active && lane == 0) {
#pragma unroll
      for (int i = 0; i < kTileRows; ++i) {
#pragma unroll
        for (int j = 0; j < kTileBatch; ++j) out(r0 + i, b0 + j, acc[i][j]);
      }
    }
  }
}

template <typename scalar_t>
struct FfmaProduct {
  using smem_t = at::opmath_type<scalar_t>;  // element of both shared copies
  static constexpr bool kTensorCores = false;
  static constexpr int kRowTile = kTileRows;     // the W slice's rows are padded to a multiple
  static constexpr int kBatchTile = kTileBatch;  // staged rows are padded to a multiple
  static constexpr int64_t kScratchBytes = 0;    // shared memory past the two copies
  // Row stride: one element of padding, so that neighbouring rows start in different banks.
  static __host__ __device__ int64_t stride(int64_t K) { return K + 1; }
  // The columns the product reads (those past K must hold zeros).
  static __host__ __device__ int64_t columns(int64_t K) { return K; }

  template <class Out>
  static __device__ void dots(const smem_t* a, int rows_pad, const smem_t* x, int batch_pad,
                              int K, int stride, float* /*scratch*/, const Out& out) {
    tile_dots(a, rows_pad, x, batch_pad, K, stride, out);
  }
};

// Two neighbouring 16-bit elements (p at an even index) as the 32-bit register that an mma
// fragment takes: the lower index in the lower half.
template <typename T>
__device__ inline uint32_t pair_at(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// d += a · b for one 16 × 8 × 16 tile: a 16 × 16 (rows × k), b 16 × 8 (k × batch), d in float.
// Fragments as the PTX ISA lays them out for mma.m16n8k16.row.col, with g = lane / 4 and
// c = 2 * (lane % 4):
//   a[0] = A(g, c..c+1)    a[1] = A(g+8, c..c+1)    a[2] = A(g, c+8..c+9)  a[3] = A(g+8, c+8..c+9)
//   b[0] = B(c..c+1, g)    b[1] = B(c+8..c+9, g)
//   d[0..1] = D(g, c..c+1) d[2..3] = D(g+8, c..c+1)
template <typename T>
__device__ inline void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // built for an older GPU: the host never plans this product there
#endif
}

// Warps take 16 × 8 output tiles. Where there are fewer tiles than warps, `slices` warps split a
// tile's k steps and add their partial sums through `scratch` ([warps][16 × 8] floats) in a fixed
// order, so that the result does not depend on timing. Within a warp, k steps go round-robin
// to four accumulators: four independent mma chains in flight instead of one.
template <typename T, class Out>
__device__ void mma_dots(const T* a, int rows_pad, const T* x, int batch_pad, int columns,
                         int stride, float* scratch, const Out& out) {
  constexpr int kM = 16, kN = 8, kK = 16, kTileElements = kM * kN;
  const int row_tiles = rows_pad / kM;
  const int tiles = row_tiles * (batch_pad / kN);
  const int depth = columns / kK;  // k steps
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = 2 * (lane % 4);
  int slices = 1;
  while (2 * slices * tiles <= warps && 2 * slices <= depth) slices *= 2;
  for (int first = 0; first < tiles * slices; first += warps) {  // slices > 1: one round
    const int item = first + warp;
    const bool active = item < tiles * slices;
    const int tile = item / slices, slice = item % slices;
    const int r0 = (tile % row_tiles) * kM, b0 = (tile / row_tiles) * kN;
    // Four independent accumulator chains (k steps s, s+1, s+2, s+3): an mma's result is ready
    // only ~30 cycles after it issues, and a backward's K (gates·H) has a hundred k steps.
    float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};
    float c2[4] = {0.f, 0.f, 0.f, 0.f}, c3[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) {
      const T* a_top = a + (r0 + g) * stride + c;  // rows g and g + 8 of the tile
      const T* a_bottom = a_top + 8 * stride;
      const T* x_row = x + (b0 + g) * stride + c;  // batch row g of the tile
      auto multiply = [&](float(&d)[4], int step) {
        const int k = step * kK;
        const uint32_t af[4] = {pair_at(a_top + k), pair_at(a_bottom + k), pair_at(a_top + k + 8),
                                pair_at(a_bottom + k + 8)};
        const uint32_t bf[2] = {pair_at(x_row + k), pair_at(x_row + k + 8)};
        mma_16x8x16<T>(d, af, bf);
      };
      const int s1 = (slice + 1) * depth / slices;
      int s = slice * depth / slices;
      for (; s + 3 < s1; s += 4) {
        multiply(c0, s);
        multiply(c1, s + 1);
        multiply(c2, s + 2);
        multiply(c3, s + 3);
      }
      for (; s < s1; ++s) multiply(c0, s);
    }
    float d[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] = (c0[i] + c1[i]) + (c2[i] + c3[i]);
    if (slices == 1) {
      if (active) {
        out(r0 + g, b0 + c, d[0]);
        out(r0 + g, b0 + c + 1, d[1]);
        out(r0 + g + 8, b0 + c, d[2]);
        out(r0 + g + 8, b0 + c + 1, d[3]);
      }
      continue;
    }
    if (active) {
      float* part = scratch + item * kTileElements;  // [16][8] this warp's partial tile
      part[g * kN + c] = d[0];
      part[g * kN + c + 1] = d[1];
      part[(g + 8) * kN + c] = d[2];
      part[(g + 8) * kN + c + 1] = d[3];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < tiles * kTileElements; e += blockDim.x) {
      const int t = e / kTileElements, i = e % kTileElements;
      float sum = 0.f;
      for (int s = 0; s < slices; ++s) sum += scratch[(t * slices + s) * kTileElements + i];
      out((t % row_tiles) * kM + i / kN, (t / row_tiles) * kN + i % kN, sum);
    }
    __syncthreads();  // scratch is free again
  }
}

template <typename scalar_t>
struct MmaProduct {
  static_assert(kHasTensorCoreProduct<scalar_t>, "tensor cores multiply float16 or bfloat16");
  using smem_t = scalar_t;
  static constexpr bool kTensorCores = true;
  static constexpr int kRowTile = 16;  // m16n8k16: W rows × batch rows × k
  static constexpr int kBatchTile = 8;
  static constexpr int kDepth = 16;
  static constexpr int64_t kScratchBytes = (kPersistentThreads / 32) * 16 * 8 * sizeof(float);
  // Row stride: K rounded up to 64 elements, plus 8. In 4-byte banks that is 4 past a multiple of
  // 32, so the 8 rows × 4 pairs of one fragment load fall in 32 different banks; and a multiple of
  // 8 elements, so that every row starts 16-byte aligned (staging stores 16 bytes at a time).
  static __host__ __device__ int64_t stride(int64_t K) { return round_up(K, 64) + 8; }
  static __host__ __device__ int64_t columns(int64_t K) { return round_up(K, kDepth); }

  template <class Out>
  static __device__ void dots(const smem_t* a, int rows_pad, const smem_t* x, int batch_pad,
                              int K, int stride, float* scratch, const Out& out) {
    mma_dots(a, rows_pad, x, batch_pad, static_cast<int>(columns(K)), stride, scratch, out);
  }
};

// f(Product{}) with the product the kernels run for scalar_t: MmaProduct where `tensor_cores`
// asks for it and scalar_t has one, else FfmaProduct.
template <typename scalar_t, class F>
auto with_product(bool tensor_cores, const F& f) {
  if constexpr (kHasTensorCoreProduct<scalar_t>) {
    if (tensor_cores) return f(MmaProduct<scalar_t>{});
  }
  return f(FfmaProduct<scalar_t>{});
}

}  // namespace persistent
}  // namespace fused_rnn
