// Side by side in one process: the CPU reduction loops (fusedopt/reduce.h's in-memory lanes)
// prefetching kPrefetchRows rows ahead into L1 (locality 3, prefetcht0) or into L2 (locality 2,
// prefetcht1, what csrc/cpu/multi_tensor_cpu.h's prefetch_ahead does), over 20M float32 from
// memory, and an Adam-shaped update of the same arrays as the yardstick. Two loops: LAMB's norm
// pass (p, g, m, v read, u recomputed, ||p||^2 and ||u||^2 summed) and the one-array sum of
// squares behind clip_grad_norm_. The contenders alternate, 11 rounds; medians in ms.
//
//   g++ -std=c++17 -O3 -fopenmp -fno-math-errno -fno-trapping-math -ffp-contract=off \
//       -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mprefer-vector-width=512 \
//       -DFUSEDOPT_CPU_ISA=avx512 -Icsrc/include -Icsrc -Ibuild/temp.linux-x86_64-cpython-311/cmake/generated/include \
//       bench/prefetch_locality.cpp -o /tmp/prefetch_locality && OMP_NUM_THREADS=2 /tmp/prefetch_locality
//
// (the generated include folder is the one an in-place build leaves; it holds optimizer_list.h.)
// The loops here are copies of norm_block and block_sum_of_squares with the locality as a
// template argument; the per-element math is the library's own (optimizers::lamb::norm_terms).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "cpu/update_cpu.h"
#include "fusedopt/optimizers/lamb.h"

using namespace fusedopt;
using namespace fusedopt::cpu;
using Lamb = optimizers::lamb;

template <int kLocality, typename T> inline void prefetch_rows_ahead(const T* row, int64_t remaining) {
  const int64_t ahead = kPrefetchRows * kSumLanes;
  if (remaining < ahead + kSumLanes) return;
  const char* line = reinterpret_cast<const char*>(row + ahead);
  for (int64_t byte = 0; byte < kSumLanes * int64_t(sizeof(T)); byte += 64) __builtin_prefetch(line + byte, 0, kLocality);
}

template <int kLocality>
__attribute__((noinline)) void lamb_norm_block(const float* __restrict p, const float* __restrict g,
                                               const float* __restrict m, const float* __restrict v, int64_t count,
                                               const Scalars<Lamb, float>& s, double* __restrict lane_a,
                                               double* __restrict lane_b) {
  for (int64_t row = 0; row + kSumLanes <= count; row += kSumLanes) {
    for (const float* x : {p, g, m, v}) prefetch_rows_ahead<kLocality>(x + row, count - row);
    for (int l = 0; l < kSumLanes; ++l) {
      const int64_t j = row + l;
      const float states[kMaxStates] = {m[j], v[j], 0.0f, 0.0f};
      Lamb::norm_terms(p[j], unscaled_grad<false>(g[j], s.grad), states, s.k, lane_a[l], lane_b[l]);
    }
  }
}

template <int kLocality>
__attribute__((noinline)) void sum_of_squares_block(const float* __restrict x, int64_t count, double* __restrict lanes) {
  for (int64_t row = 0; row + kSumLanes <= count; row += kSumLanes) {
    prefetch_rows_ahead<kLocality>(x + row, count - row);
    for (int l = 0; l < kSumLanes; ++l) {
      const double value = double(x[row + l]);
      lanes[l] += value * value;
    }
  }
}

int main() {
  const int64_t n = 20'000'000;
  std::vector<float> p(n), g(n), m(n), v(n);
#pragma omp parallel for
  for (int64_t i = 0; i < n; ++i) {
    p[i] = float(i % 97) * 0.01f, g[i] = float(i % 89) * 0.01f - 0.4f;
    m[i] = float(i % 13) * 0.01f, v[i] = float(i % 7) * 0.001f;
  }
  Lamb::Hyper hyper{};
  hyper.beta1 = 0.9, hyper.beta2 = 0.999, hyper.eps = 1e-6, hyper.weight_decay = 0.01;
  hyper.bias_correction = true, hyper.grad_averaging = true;
  Scalars<Lamb, float> scalars;
  scalars.k = Lamb::coefficients<float>(hyper, 1e-3, 5.0);
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  double sink = 0.0;  // keeps every sum alive
  const auto timed = [](auto&& body) {
    const auto start = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  };
  const auto over_blocks = [&](auto&& block) {
    return timed([&] {
      double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
      for (int64_t b = 0; b < blocks; ++b) {
        double lane_a[kSumLanes] = {}, lane_b[kSumLanes] = {};
        const int64_t begin = b * kSumBlock;
        block(begin, std::min(kSumBlock, n - begin), lane_a, lane_b);
        lane_tree(lane_a), lane_tree(lane_b);
        total += lane_a[0] + lane_b[0];
      }
      sink += total;
    });
  };
  const auto adam_shaped_update = [&] {
    return timed([&] {
#pragma omp parallel
      {
        const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
        const int64_t lo = n * t / threads / 16 * 16, hi = t + 1 == threads ? n : n * (t + 1) / threads / 16 * 16;
        FUSEDOPT_CPU_ISA::detail::update_loop<Lamb, float, float, false, 3u, false, false>(
            p.data() + lo, g.data() + lo, m.data() + lo, v.data() + lo, nullptr, nullptr, nullptr, hi - lo, scalars);
      }
    });
  };
  const char* names[] = {"LAMB norm pass, L1 prefetch", "LAMB norm pass, L2 prefetch", "sum of squares, L1 prefetch",
                         "sum of squares, L2 prefetch", "Adam-shaped update (yardstick)"};
  std::vector<double> times[5];
  for (int round = 0; round < 11; ++round) {
    times[0].push_back(over_blocks([&](int64_t b, int64_t c, double* a, double* bb) {
      lamb_norm_block<3>(&p[b], &g[b], &m[b], &v[b], c, scalars, a, bb); }));
    times[1].push_back(over_blocks([&](int64_t b, int64_t c, double* a, double* bb) {
      lamb_norm_block<2>(&p[b], &g[b], &m[b], &v[b], c, scalars, a, bb); }));
    times[2].push_back(over_blocks([&](int64_t b, int64_t c, double* a, double*) { sum_of_squares_block<3>(&g[b], c, a); }));
    times[3].push_back(over_blocks([&](int64_t b, int64_t c, double* a, double*) { sum_of_squares_block<2>(&g[b], c, a); }));
    times[4].push_back(adam_shaped_update());
  }
  std::printf("%lld float32 elements, %d threads, medians of 11 alternating rounds (checksum %g)\n",
              static_cast<long long>(n), omp_get_max_threads(), sink);
  for (int k = 0; k < 5; ++k) {
    std::sort(times[k].begin(), times[k].end());
    std::printf("  %-32s %7.2f ms\n", names[k], times[k][times[k].size() / 2]);
  }
  return 0;
}
