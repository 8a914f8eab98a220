// The reset_before GRU (TF's GRUCell) as one persistent kernel forward and one backward. n needs
// W_hn (r ⊙ h_{t-1}) of every unit, so each step has two products and two grid barriers:
//   forward s:   hh_rz[:, own] = h · W_{r,z}[own]ᵀ;   first(b, j) for own j (r, z, r ⊙ h);  grid.sync
//                hh_n[:, own] = (r ⊙ h) · W_n[own]ᵀ;  second(b, j) (n; h updated in place); grid.sync
//   backward i:  first(b, j) for own j (d a_z, d a_n, the direct part of dh);            grid.sync
//                d(r h)[:, own] = d a_n · W_n[:, own];  second(b, j) (d a_r; dh += d(r h) r); grid.sync
//                dh[:, own] += d a_{r,z} · W_{r,z}[:, own]
// A block keeps the same W slice as the reset_after GRU's kernels (the rows, or columns, of all
// three gates of its units) and multiplies all of it in each phase, keeping what that phase
// needs: twice the multiply-adds, for one shared-memory layout and plan. The persistent
// algorithm is for shapes where a step's latency, not its arithmetic, is the cost.
//
// The state is updated in place (no ping-pong): the second steps write h[:, own] only after the
// barrier that ends every block's reads of h in the first phase.
//
// Checked on a GPU (smoke test, tests, memcheck and racecheck clean; docs/persistent.md says
// which run) but not yet timed: algo="persistent" runs it; "auto" keeps the stepwise loop for
// the reset_before GRU until it has been measured.
#pragma once

#include "persistent.cuh"

namespace fused_rnn {
namespace persistent {

template <class Pair, class Product>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    reset_before_forward_kernel(const PersistentResetBeforeForwardArgs<Pair> a,
                                const PersistentPlan plan) {
  using scalar_t = typename Pair::scalar_type;
  using acc_t = at::opmath_type<scalar_t>;
  using smem_t = typename Product::smem_t;
  cg::grid_group grid = cg::this_grid();
  constexpr int G = 3;
  const int H = static_cast<int>(a.H), B = static_cast<int>(a.B);
  const int U = static_cast<int>(plan.units), chunk = static_cast<int>(plan.batch_chunk);
  const BlockUnits own(U, H);
  const int rows_pad = static_cast<int>(round_up(G * U, Product::kRowTile));
  const int stride = static_cast<int>(Product::stride(H));
  extern __shared__ __align__(16) unsigned char shared_raw[];
  smem_t* w_s = reinterpret_cast<smem_t*>(shared_raw);  // [rows_pad][stride] row g*U+u = W_hh row g*H+u0+u
  smem_t* x_s = w_s + rows_pad * stride;                // [chunk][stride] rows of h, then of r ⊙ h
  float* scratch = reinterpret_cast<float*>(x_s + chunk * stride);  // Product::kScratchBytes

  load_own_rows(w_s, stride, rows_pad, static_cast<int>(Product::columns(H)), a.w_hh, H, G, U, own);
  zero_shared(x_s, chunk * stride);
  for (int64_t s = 0; s < a.T; ++s) {
    const Pair step = a.steps[s];
    multiply_staged<Product>(w_s, rows_pad, x_s, chunk, stride, scratch, a.h, B, H,
                             [&](int b, int r, acc_t value) {
                               const int g = r / U, u = r % U;
                               if (g < 2 && u < own.units) {
                                 a.hh_rz[static_cast<int64_t>(b) * 2 * H + g * H + own.u0 + u] =
                                     static_cast<scalar_t>(value);
                               }
                             });
    for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
      step.first(i / own.units, own.u0 + i % own.units);
    }
    grid.sync();  // r ⊙ h complete in every block; nobody reads h until the next step
    multiply_staged<Product>(w_s, rows_pad, x_s, chunk, stride, scratch, a.rh, B, H,
                             [&](int b, int r, acc_t value) {
                               const int g = r / U, u = r % U;
                               if (g == 2 && u < own.units) {
                                 a.hh_n[static_cast<int64_t>(b) * H + own.u0 + u] =
                                     static_cast<scalar_t>(value);
                               }
                             });
    for (int i = threadIdx.x; i < B * own.units; i += blockDim.x) {
      step.second(i / own.units, own.u0 + i % own.units);
    }
    grid.sync();  // h_{s+1} complete in every block; nobody reads r ⊙ h any more
  }
}

template <class Pair, class Product>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    reset_before_backward_kernel(const PersistentResetBeforeBackwardArgs<Pair> a,
                                 const PersistentPlan plan) {
  using scalar_t = typename Pair::scalar_type;
  using acc_t = at::opmath_type<scalar_t>;
  using smem_t = typename Product::smem_t;
  cg::grid_group grid = cg::this_grid();
  const int H = static_cast<int>(a.H), B = static_cast<int>(a.B);
  const int K = 3 * H;  // d x_proj's row length
  const int U = static_cast<int>(plan.units), chunk = static_cast<int>(plan.batch_chunk);
  const BlockUnits own(U, H);
  const int rows_pad = static_cast<int>(round_up(U, Product::kRowTile));
  const int stride = static_cast<int>(Product::stride(K));
  const int columns = static_cast<int>(Product::columns(K));
  extern __shared__ __align__(16) unsigned char shared_raw[];
  smem_t* w_s = reinterpret_cast<smem_t*>(shared_raw);  // [rows_pad][stride] row n = W_hh column u0+n
  smem_t* d_s = w_s + rows_pad * stride;                // [chunk][stride] a window of d x_proj rows
  float* scratch = reinterpret_cast<float*>(d_s + chunk * stride);  // Product::kScratchBytes

  load_own_columns(w_s, stride, rows_pad, columns, a.w_hh, H, K, own);
  zero_shared(d_s, chunk * stride);
  // d x_proj_t's columns [c0, c1) times W's columns of the own units, rows [c0, c1) of W.
  auto multiply_window = [&](const scalar_t* d_x_t, int c0, int c1, auto out) {
    multiply_staged_by<Product>(w_s, rows_pad, chunk, d_s, stride, scratch, B, K,
                                [&](int b0, int rows, int rows_padded) {
                                  stage_window(d_s, stride, d_x_t + static_cast<int64_t>(b0) * K,
                                               K, K, c0, c1, rows, rows_padded);
                                },
                                out);
  };
  for (int64_t i = 0; i < a.T; ++i) {
    const Pair step = a.steps[i];
    const int64_t t = a.reverse ? i : a.T - 1 - i;
    const scalar_t* d_x_t = a.d_x + t * B * K;
    for (int e = threadIdx.x; e < B * own.units; e += blockDim.x) {
      step.first(e / own.units, own.u0 + e % own.units);
    }
    grid.sync();  // d a_n (and d a_z) complete in every block
    multiply_window(d_x_t, 2 * H, 3 * H, [&](int b, int n, acc_t value) {
      if (n < own.units) a.d_rh[static_cast<int64_t>(b) * H + own.u0 + n] = static_cast<scalar_t>(value);
    });
    for (int e = threadIdx.x; e < B * own.units; e += blockDim.x) {
      step.second(e / own.units, own.u0 + e % own.units);
    }
    grid.sync();  // d a_r complete in every block
    multiply_window(d_x_t, 0, 2 * H, [&](int b, int n, acc_t value) {
      if (n < own.units) {
        scalar_t* dh = a.dh + static_cast<int64_t>(b) * H + own.u0 + n;
        *dh = static_cast<scalar_t>(static_cast<acc_t>(*dh) + value);
      }
    });
  }
}

}  // namespace persistent

template <class Pair>
PersistentPlan plan_reset_before_forward(int64_t B, int64_t H, bool tensor_cores) {
  auto kernel_of = [](auto product) {
    return reinterpret_cast<const void*>(
        &persistent::reset_before_forward_kernel<Pair, decltype(product)>);
  };
  return persistent::plan_for_product<typename Pair::scalar_type>(tensor_cores, kernel_of, B, H,
                                                                  3, H);
}

template <class Pair>
PersistentPlan plan_reset_before_backward(int64_t B, int64_t H, bool tensor_cores) {
  auto kernel_of = [](auto product) {
    return reinterpret_cast<const void*>(
        &persistent::reset_before_backward_kernel<Pair, decltype(product)>);
  };
  return persistent::plan_for_product<typename Pair::scalar_type>(tensor_cores, kernel_of, B, H,
                                                                  1, 3 * H);
}

template <class Pair>
void launch_reset_before_forward(const PersistentResetBeforeForwardArgs<Pair>& args,
                                 const PersistentPlan& plan) {
  persistent::with_product<typename Pair::scalar_type>(plan.tensor_cores, [&](auto product) {
    persistent::launch(&persistent::reset_before_forward_kernel<Pair, decltype(product)>, args, plan);
  });
}

template <class Pair>
void launch_reset_before_backward(const PersistentResetBeforeBackwardArgs<Pair>& args,
                                  const PersistentPlan& plan) {
  persistent::with_product<typename Pair::scalar_type>(plan.tensor_cores, [&](auto product) {
    persistent::launch(&persistent::reset_before_backward_kernel<Pair, decltype(product)>, args, plan);
  });
}

}  // namespace fused_rnn

// Instantiates the reset_before GRU's persistent plans and launchers for every storage type.
#define FUSED_RNN_INSTANTIATE_RESET_BEFORE_FOR(scalar_t)                                           \
  template fused_rnn::PersistentPlan fused_rnn::plan_reset_before_forward<                          \
      fused_rnn::ResetBeforeForwardPair<scalar_t>>(int64_t, int64_t, bool);                         \
  template fused_rnn::PersistentPlan fused_rnn::plan_reset_before_backward<                         \
      fused_rnn::ResetBeforeBackwardPair<scalar_t>>(int64_t, int64_t, bool);                        \
  template void fused_rnn::launch_reset_before_forward(                                             \
      const fused_rnn::PersistentResetBeforeForwardArgs<fused_rnn::ResetBeforeForwardPair<scalar_t>>&, \
      const fused_rnn::PersistentPlan&);                                                            \
  template void fused_rnn::launch_reset_before_backward(                                            \
      const fused_rnn::PersistentResetBeforeBackwardArgs<fused_rnn::ResetBeforeBackwardPair<scalar_t>>&, \
      const fused_rnn::PersistentPlan&);

#define FUSED_RNN_INSTANTIATE_RESET_BEFORE()          \
  FUSED_RNN_INSTANTIATE_RESET_BEFORE_FOR(float)       \
  FUSED_RNN_INSTANTIATE_RESET_BEFORE_FOR(double)      \
  FUSED_RNN_INSTANTIATE_RESET_BEFORE_FOR(c10::Half)   \
  FUSED_RNN_INSTANTIATE_RESET_BEFORE_FOR(c10::BFloat16)
