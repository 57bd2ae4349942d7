// Picks the CPU kernels built for the best instruction set this processor has.
#include <cstdlib>
#include <cstring>

#include "cpu/kernels.h"

#if FUSEDOPT_HAVE_ISA_BASELINE
FUSEDOPT_DECLARE_CPU_KERNELS(baseline)
#endif
#if FUSEDOPT_HAVE_ISA_AVX2
FUSEDOPT_DECLARE_CPU_KERNELS(avx2)
#endif
#if FUSEDOPT_HAVE_ISA_AVX512
FUSEDOPT_DECLARE_CPU_KERNELS(avx512)
#endif

namespace fusedopt::cpu {
namespace {

enum class Isa { Baseline, Avx2, Avx512 };

Isa best_isa() {
#if defined(__x86_64__) && (FUSEDOPT_HAVE_ISA_AVX2 || FUSEDOPT_HAVE_ISA_AVX512)
  __builtin_cpu_init();
#if FUSEDOPT_HAVE_ISA_AVX512
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::Avx512;
#endif
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::Avx2;
#endif
  return Isa::Baseline;
}

// FUSEDOPT_CPU_ISA=baseline|avx2 picks a lesser instruction set than the CPU's best, so
// tests can check that every variant computes the same bits (and run the portable one).
Isa detect_isa() {
  const Isa best = best_isa();
  const char* requested = std::getenv("FUSEDOPT_CPU_ISA");
  if (requested == nullptr) return best;
  if (std::strcmp(requested, "baseline") == 0) return Isa::Baseline;
  if (std::strcmp(requested, "avx2") == 0 && best != Isa::Baseline) return Isa::Avx2;
  return best;
}

const Isa kIsa = detect_isa();

}  // namespace

#if FUSEDOPT_HAVE_ISA_AVX512
#define FUSEDOPT_CASE_AVX512(fn) case Isa::Avx512: return avx512::fn;
#else
#define FUSEDOPT_CASE_AVX512(fn)
#endif
#if FUSEDOPT_HAVE_ISA_AVX2
#define FUSEDOPT_CASE_AVX2(fn) case Isa::Avx2: return avx2::fn;
#else
#define FUSEDOPT_CASE_AVX2(fn)
#endif
#define FUSEDOPT_DISPATCH(fn, ...)                    \
  switch (kIsa) {                                     \
    FUSEDOPT_CASE_AVX512(fn(__VA_ARGS__))             \
    FUSEDOPT_CASE_AVX2(fn(__VA_ARGS__))               \
    default: return baseline::fn(__VA_ARGS__);        \
  }

void adam(const TensorTable& t, DType d, const AdamConfig& c, int threads) { FUSEDOPT_DISPATCH(adam, t, d, c, threads) }
void sgd(const TensorTable& t, DType d, const SGDConfig& c, int threads) { FUSEDOPT_DISPATCH(sgd, t, d, c, threads) }
void rmsprop(const TensorTable& t, DType d, const RMSpropConfig& c, int threads) {
  FUSEDOPT_DISPATCH(rmsprop, t, d, c, threads)
}

double sum_of_squares(const TensorTable& t, DType d, int threads) { FUSEDOPT_DISPATCH(sum_of_squares, t, d, threads) }

const char* isa_name() {
  switch (kIsa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace fusedopt::cpu
