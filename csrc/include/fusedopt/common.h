// Shared by the CPU and CUDA kernels: function qualifiers, dtype codes and the 16-bit
// float storage types with their conversions. No libtorch, no CUDA headers on the host.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HD inline __attribute__((always_inline))
#endif

namespace fusedopt {

// Numbers Python uses to name a bucket's dtype (fusedopt/backends/native.py mirrors them).
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// 16-bit floats are stored as raw bits so host and device code share one layout.
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

FUSEDOPT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
FUSEDOPT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

// bfloat16: the top half of a float32; rounding to nearest even, NaN kept quiet.
FUSEDOPT_HD float bf16_to_float(BFloat16 h) { return bits_float(uint32_t(h.bits) << 16); }
FUSEDOPT_HD BFloat16 float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(u >> 16)};
}

// Stochastic rounding to bfloat16 (bf16_stochastic_round=True, bf16 params without a master
// copy; fusedopt/backends/reference/_rounding.py is the readable statement, the Triton kernel
// restates it in fusedopt/backends/triton/_math.py). The rule, on the float32 bits x of the
// update's result and a 16-bit random r:
//   bf16 = upper 16 bits of (x + r)   (integer add on the bits, then truncation)
// so a value rounds away from zero with probability (dropped 16 bits) / 2^16, to the one
// of its two neighbouring bf16 values, and the expected result is the float32 value. A carry
// into the exponent is the correct rounding up (subnormals included); a finite value above
// the largest bf16 (within one bf16 ulp of it) rounds to +-Inf with that probability, as
// round-to-nearest does past half an ulp. +-Inf have zero low bits and stay; a NaN is not
// added to (it could carry into the sign) but kept quiet, as float_to_bf16 keeps it.
//
// The random bits: a counter-based hash of (a 64-bit seed drawn once per update call, the
// tensor's column in the call's table, the element's index in the tensor, in memory order),
// made of 32-bit wrapping multiplies and xor-shifts, which every engine computes alike.
// mix32 is Wellons' "lowbias32" integer finaliser.
FUSEDOPT_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
// The tensor's key: once per tensor (per chunk on the GPU).
FUSEDOPT_HD uint32_t rounding_key(uint64_t seed, int64_t tensor) {
  return mix32(mix32(mix32(uint32_t(tensor)) ^ uint32_t(seed)) ^ uint32_t(seed >> 32));
}
// The 16 random bits of element `index` of the tensor with that key (the hash's upper half).
FUSEDOPT_HD uint32_t rounding_bits(uint32_t key, int64_t index) {
  return mix32(mix32(key ^ uint32_t(uint64_t(index))) ^ uint32_t(uint64_t(index) >> 32)) >> 16;
}
FUSEDOPT_HD BFloat16 float_to_bf16_stochastic(float f, uint32_t random16) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40u)};
  return BFloat16{uint16_t((u + random16) >> 16)};
}

// IEEE half. Written as selects rather than early returns so the CPU loops vectorise.
FUSEDOPT_HD float half_to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  // Subnormals and zero: mantissa * 2^-24 is exact in float.
  const float subnormal = float(mantissa) * 0x1.0p-24f;
  uint32_t bits = exponent == 0 ? float_bits(subnormal)
                : exponent == 0x1fu ? (0x7f800000u | (mantissa << 13))   // inf, NaN
                : (((exponent + 112u) << 23) | (mantissa << 13));       // rebias 15 -> 127
  return bits_float(sign | bits);
}
FUSEDOPT_HD Half float_to_half(float f) {
  const uint32_t w = float_bits(f);
  const uint32_t sign = (w >> 16) & 0x8000u;
  const uint32_t magnitude = w & 0x7fffffffu;
  // Below 2^-14 the half is subnormal: adding 0.5f puts the value's 2^-24 units in the
  // low mantissa bits of the sum, and the float adder rounds to nearest even for us.
  const uint32_t subnormal = float_bits(bits_float(magnitude) + 0.5f) - 0x3f000000u;
  // Normal: rebias the exponent (127 -> 15) and round 23 -> 10 mantissa bits, ties to even.
  const uint32_t normal = (magnitude + 0xc8000fffu + ((magnitude >> 13) & 1u)) >> 13;
  uint32_t result = magnitude > 0x7f800000u ? 0x7e00u                 // NaN
                  : magnitude >= 0x477ff000u ? 0x7c00u                // rounds past 65504: inf
                  : magnitude < 0x38800000u ? subnormal : normal;
  return Half{uint16_t(sign | result)};
}

// Load/store between a storage type and the type the math runs in ("opmath"):
// float for float32 and the 16-bit types, double for float64, as torch does.
template <typename Storage> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

FUSEDOPT_HD float to_opmath(float x) { return x; }
FUSEDOPT_HD double to_opmath(double x) { return x; }
FUSEDOPT_HD float to_opmath(Half x) { return half_to_float(x); }
FUSEDOPT_HD float to_opmath(BFloat16 x) { return bf16_to_float(x); }

template <typename Storage> FUSEDOPT_HD Storage from_opmath(typename OpMath<Storage>::type x);
template <> FUSEDOPT_HD float from_opmath<float>(float x) { return x; }
template <> FUSEDOPT_HD double from_opmath<double>(double x) { return x; }
template <> FUSEDOPT_HD Half from_opmath<Half>(float x) { return float_to_half(x); }
template <> FUSEDOPT_HD BFloat16 from_opmath<BFloat16>(float x) { return float_to_bf16(x); }

// What every optimizer does to a gradient before its own math, in this order:
// torch.amp.GradScaler's unscale (grad / scale) and skip (the whole step, step counters
// included, when an inf or NaN was found), the clip coefficient of max_grad_norm
// (grad * coef; the norm is taken over the unclamped grads), then clip_grad_value's clamp to
// [-clip_value, clip_value] -- the same as torch's scaler.unscale_, clip_grad_norm_,
// clip_grad_value_ and then the step. Maximize's sign and weight decay are the optimizer's
// and come after. grad_scale and found_inf each point to one float32 (GradScaler's), clip_coef
// to one value of the update's math type (double for float64 params, float for the others:
// torch scales float64 grads by a float64 coefficient), beside the params (host memory for the
// CPU kernels, device memory for the GPU ones), or are null, so a GPU step reads them without a
// host sync; clip_value is a plain number from the param group (0: no clamp).
//
// With GradScaler's scale the kernels also store the gradient they used (grad / scale * coef,
// clamped, before maximize's sign and weight decay, rounded to the grad's dtype) back into
// the grad: torch's fused optimizers write grad / scale back under GradScaler, and torch's
// scaler.unscale_ + clip_grad_norm_ + clip_grad_value_ leave the grads unscaled and clipped,
// so p.grad after the step is what torch leaves. A skipped step (found_inf) writes nothing,
// as torch's fused optimizers, which return before touching the grads.
struct GradTransform {
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
  const void* clip_coef = nullptr;  // math-type values (math_value)
  double clip_value = 0.0;  // clip_grad_value: > 0 clamps every grad element to [-clip_value, clip_value]
  // clip_grad_norm_per_tensor: one math-type value per table column (null: none), the tensor's
  // own clip coefficient already multiplied by max_grad_norm's; where given it is the grad's
  // multiplier in place of clip_coef's (the generic loops set GradFactors::multiplier per tensor).
  const void* tensor_clip = nullptr;
};

// Value `index` of an array of math-type values T (clip_coef, tensor_clip), and the bytes one
// takes for params of `dtype` (host code that walks such an array without knowing T).
template <typename T> FUSEDOPT_HD T math_value(const void* values, int64_t index = 0) {
  return static_cast<const T*>(values)[index];
}
inline constexpr int64_t math_value_bytes(DType dtype) { return dtype == DType::Float64 ? 8 : 4; }
inline const void* math_value_address(const void* values, DType dtype, int64_t index) {
  return static_cast<const char*>(values) + index * math_value_bytes(dtype);
}

FUSEDOPT_HD bool step_skipped(const GradTransform& t) { return t.found_inf != nullptr && *t.found_inf != 0.0f; }

// Whether the kernels store the transformed gradient back (see GradTransform).
// Only with GradScaler's scale, as torch's fused optimizers do: max_grad_norm or
// clip_grad_value alone leave the grads as they were, which spares a write of every grad
// element in a memory-bound step.
// The CPU loops also read it as "a scale divides the grads" (unscaled_grad<kScaled>).
FUSEDOPT_HD bool writes_grad(const GradTransform& t) { return t.grad_scale != nullptr; }

template <typename T> struct GradFactors {
  T divisor = T(1);     // dividing by 1 and multiplying by 1 are exact: no branch needed (the CPU
                        // loops still leave the division out, unscaled_grad<false>)
  T multiplier = T(1);
  T bound = T(INFINITY);  // clamping to [-inf, inf] changes nothing (NaN included): no branch either
};

template <typename T> FUSEDOPT_HD GradFactors<T> grad_factors(const GradTransform& t) {
  GradFactors<T> f;
  if (t.grad_scale != nullptr) f.divisor = T(*t.grad_scale);
  if (t.clip_coef != nullptr) f.multiplier = math_value<T>(t.clip_coef);
  if (t.clip_value > 0.0) f.bound = T(t.clip_value);  // rounded to the math type, as torch.clamp's scalar
  return f;
}

// The gradient the update uses, and the one written back: unscaled, clipped by norm, then
// clamped. The clamp is written as torch.clamp computes it: selects that keep a NaN a NaN.
// kScaled false (no GradScaler scale: the divisor is 1) leaves the division out: the same
// result, and on a CPU whose update is bound by its divide unit, a quarter of Adam's work.
template <bool kScaled = true, typename T> FUSEDOPT_HD T unscaled_grad(T g, const GradFactors<T>& f) {
  if constexpr (kScaled) g = g / f.divisor;
  g = g * f.multiplier;
  g = g > f.bound ? f.bound : g;
  return g < -f.bound ? -f.bound : g;
}

// The learning rate: a number from Python, or read from memory when Python passed a
// float64 tensor (`lr_tensor`), so a captured CUDA graph follows a schedule.
FUSEDOPT_HD double learning_rate(const double* lr_tensor, double lr) { return lr_tensor != nullptr ? *lr_tensor : lr; }

// base ** step for a step counter (a whole number stored as a float32), the same bits on
// the CPU and the GPU: std::pow and CUDA's pow differ in the last place, so neither is
// used. Squaring in double-double arithmetic (fma gives each product's rounding error
// exactly) keeps ~100 bits, and the one final rounding is the correctly rounded result
// except within ~2^-100 of a tie. Only IEEE operations: the host and device compilers'
// fma, and no contraction of the rest (-ffp-contract=off, nvcc --fmad=false). A counter
// that is not a whole number (never written by fusedopt) falls back to std::pow.
FUSEDOPT_HD void two_product(double a_hi, double a_lo, double b_hi, double b_lo, double& hi, double& lo) {
  const double product = a_hi * b_hi;
  double error = std::fma(a_hi, b_hi, -product);
  error = error + (a_hi * b_lo + a_lo * b_hi);
  hi = product + error;
  lo = error - (hi - product);
}

FUSEDOPT_HD double step_power(double base, double step) {
  if (!(step >= 0.0 && step <= 4294967295.0) || step != double(uint64_t(step))) return std::pow(base, step);
  uint64_t n = uint64_t(step);
  double result_hi = 1.0, result_lo = 0.0, square_hi = base, square_lo = 0.0;
  while (n != 0) {
    if (n & 1u) two_product(result_hi, result_lo, square_hi, square_lo, result_hi, result_lo);
    n >>= 1;
    if (n != 0) two_product(square_hi, square_lo, square_hi, square_lo, square_hi, square_lo);
  }
  return result_hi + result_lo;
}

// torch's lerp: the two-sided formula keeps the result exact at weight 0 and 1.
template <typename T> FUSEDOPT_HD T lerp(T start, T end, T weight) {
  return weight < T(0.5) ? start + weight * (end - start) : end - (end - start) * (T(1) - weight);
}

// Calls body with the storage type named by a DType code: the one place dtypes are
// dispatched (Apex's type_shim.h does the same with a macro).
template <typename Body> inline bool dispatch_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::Float32: body(float{}); return true;
    case DType::Float64: body(double{}); return true;
    case DType::Float16: body(Half{}); return true;
    case DType::BFloat16: body(BFloat16{}); return true;
  }
  return false;
}

// Calls body(ParamStorage{}, StateStorage{}, std::bool_constant<master copy>{}): states are
// stored like the param, except with master weights for a 16-bit param, whose states and
// master copy are float32, with bf16_states (state_dtype=torch.bfloat16), whose states
// are bfloat16 for a float32 or 16-bit param (the master copy stays float32), and with
// float32_states for a 16-bit param without a master copy (the small tensors of an "int8"
// group, which keep float32 states as bitsandbytes' do). Python refuses bf16_states for
// float64 params, whose math runs in double; so does this, rather than read 2-byte states as
// doubles past their end.
template <typename Body>
inline bool dispatch_storage(DType dtype, bool master_weights, bool bf16_states, bool float32_states, Body&& body) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using S = decltype(tag);
    constexpr bool kSixteenBit = std::is_same_v<S, Half> || std::is_same_v<S, BFloat16>;
    if constexpr (std::is_same_v<S, double>) {
      if (bf16_states) throw std::invalid_argument("fusedopt: bf16 states are for float32 math, not float64 params");
    }
    if constexpr (kSixteenBit) {
      if (master_weights && bf16_states) return body(S{}, BFloat16{}, std::true_type{});
      if (master_weights || float32_states) {
        if (bf16_states) throw std::invalid_argument("fusedopt: bf16 and float32 states at once");
        if (master_weights) return body(S{}, float{}, std::true_type{});
        return body(S{}, float{}, std::false_type{});
      }
    }
    if constexpr (!std::is_same_v<S, double> && !std::is_same_v<S, BFloat16>) {
      if (bf16_states) return body(S{}, BFloat16{}, std::false_type{});
    }
    body(S{}, S{}, std::false_type{});
  });
}

}  // namespace fusedopt
