// The CUDA language as host C++: what nvcc's device pass gives a kernel (qualifiers,
// threadIdx and friends, __syncthreads, vector types, bit casts, IEEE intrinsics, 16-bit
// float conversions, atomics), so csrc/cuda's kernels compile with g++ and run on the
// CPU (csrc/cuda_host/executor.cpp runs the blocks and threads).
//
// Only what has one exact meaning on the host is here. Approximate device functions
// (rsqrtf, __expf, __fdividef, ...), warp-level operations (__shfl_sync, __ballot_sync,
// __syncwarp) and dynamic shared memory (extern __shared__) are left out on purpose: a
// kernel that starts using one fails to compile here, and this file is where to add it.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

// The device pass of nvcc, for a GPU of compute capability 9.0.
#define FUSEDOPT_CUDA_HOST 1
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// One block runs at a time (executor.cpp), so a static variable is exactly the block's
// shared variable. Limitation: it starts with the previous block's values, not undefined
// ones (g++ 12 ignores section attributes on statics of templates, so they cannot be
// gathered and poisoned), so a read before the block's first write is seen only where the
// values differ from the previous block's: the tests run threads in reverse order too.
#define __shared__ static
#define __constant__ static
#define __managed__

// ---- vector types ---------------------------------------------------------------------------
// Same members and alignment as CUDA's (2- and 4-element vectors aligned to their size, at
// most 16 bytes), so a 16-byte access through uint4* is one aligned access here too.
#define FUSEDOPT_HOST_VECTOR_TYPES(T, name)                                                               \
  struct name##1 { T x; };                                                                                \
  struct alignas(2 * sizeof(T) > 16 ? 16 : 2 * sizeof(T)) name##2 { T x, y; };                           \
  struct name##3 { T x, y, z; };                                                                          \
  struct alignas(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) name##4 { T x, y, z, w; };                     \
  inline name##1 make_##name##1(T x) { return name##1{x}; }                                               \
  inline name##2 make_##name##2(T x, T y) { return name##2{x, y}; }                                       \
  inline name##3 make_##name##3(T x, T y, T z) { return name##3{x, y, z}; }                               \
  inline name##4 make_##name##4(T x, T y, T z, T w) { return name##4{x, y, z, w}; }
FUSEDOPT_HOST_VECTOR_TYPES(signed char, char)
FUSEDOPT_HOST_VECTOR_TYPES(unsigned char, uchar)
FUSEDOPT_HOST_VECTOR_TYPES(short, short)
FUSEDOPT_HOST_VECTOR_TYPES(unsigned short, ushort)
FUSEDOPT_HOST_VECTOR_TYPES(int, int)
FUSEDOPT_HOST_VECTOR_TYPES(unsigned int, uint)
FUSEDOPT_HOST_VECTOR_TYPES(long long, longlong)
FUSEDOPT_HOST_VECTOR_TYPES(unsigned long long, ulonglong)
FUSEDOPT_HOST_VECTOR_TYPES(float, float)
FUSEDOPT_HOST_VECTOR_TYPES(double, double)
#undef FUSEDOPT_HOST_VECTOR_TYPES

// ---- built-in variables ---------------------------------------------------------------------
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
// Set by the executor before it resumes a thread; read-only for kernels, as on a GPU.
extern const uint3& threadIdx;
extern const uint3& blockIdx;
extern const dim3& blockDim;
extern const dim3& gridDim;
constexpr int warpSize = 32;

// Waits until every thread of the block has arrived (executor.cpp). Not inline: the
// compiler must assume it changes threadIdx and shared memory.
void __syncthreads();
// Every thread of this host "device" sees every write in program order.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- bit casts --------------------------------------------------------------------------------
namespace fusedopt::cuda_host {
template <typename To, typename From> inline To bits_as(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}
}  // namespace fusedopt::cuda_host

inline unsigned int __float_as_uint(float x) { return fusedopt::cuda_host::bits_as<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return fusedopt::cuda_host::bits_as<float>(x); }
inline double __hiloint2double(int hi, int lo) {
  return fusedopt::cuda_host::bits_as<double>((static_cast<unsigned long long>(static_cast<unsigned int>(hi)) << 32) |
                                              static_cast<unsigned int>(lo));
}
inline int __double2hiint(double x) {
  return static_cast<int>(static_cast<unsigned int>(fusedopt::cuda_host::bits_as<unsigned long long>(x) >> 32));
}
inline int __double2loint(double x) {
  return static_cast<int>(static_cast<unsigned int>(fusedopt::cuda_host::bits_as<unsigned long long>(x)));
}
inline int __float_as_int(float x) { return fusedopt::cuda_host::bits_as<int>(x); }
inline float __int_as_float(int x) { return fusedopt::cuda_host::bits_as<float>(x); }
inline long long __double_as_longlong(double x) { return fusedopt::cuda_host::bits_as<long long>(x); }
inline double __longlong_as_double(long long x) { return fusedopt::cuda_host::bits_as<double>(x); }

// ---- correctly rounded arithmetic -------------------------------------------------------------
// The _rn intrinsics are IEEE operations rounded to nearest, never contracted: the host's
// own operations, as long as this is compiled with -ffp-contract=off (CMakeLists.txt).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// CUDA's min/max overloads for device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- integer intrinsics -----------------------------------------------------------------------
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }

// ---- loads ------------------------------------------------------------------------------------
template <typename T> inline T __ldg(const T* address) { return *address; }

// ---- atomics ----------------------------------------------------------------------------------
// Threads run one at a time (executor.cpp): a read-modify-write is atomic as written.
template <typename T> inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T> inline T atomicSub(T* address, T value) {
  const T old = *address;
  *address = old - value;
  return old;
}
template <typename T> inline T atomicMax(T* address, T value) {
  const T old = *address;
  *address = old > value ? old : value;
  return old;
}
template <typename T> inline T atomicMin(T* address, T value) {
  const T old = *address;
  *address = old < value ? old : value;
  return old;
}
template <typename T> inline T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T> inline T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// ---- 16-bit floats (cuda_fp16.h, cuda_bf16.h) --------------------------------------------------
// Conversions to 16 bits round to nearest even; NaN becomes the canonical NaN 0x7FFF, as the
// CUDA headers define it. Written from the IEEE definitions, independently of the portable
// conversions in csrc/include/fusedopt/common.h that the CPU kernels use, so the tests
// compare two implementations (tests/test_cuda_host.py also checks these against torch).
struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};
using half = __half;
using nv_bfloat16 = __nv_bfloat16;

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16{bits}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

inline float __half2float(__half h) {
  const unsigned int sign = (unsigned int)(h.__x & 0x8000u) << 16;
  const unsigned int exponent = (h.__x >> 10) & 0x1fu;
  const unsigned int fraction = h.__x & 0x3ffu;
  if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (fraction << 13));  // inf, NaN
  if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (fraction << 13));
  // zero and subnormals: fraction units of 2^-24, exact in float
  const float magnitude = std::ldexp(float(fraction), -24);
  return sign ? -magnitude : magnitude;
}

inline __half __float2half_rn(float x) {
  const unsigned int bits = __float_as_uint(x);
  const unsigned int sign = (bits >> 16) & 0x8000u;
  const unsigned int magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return __half{0x7fffu};
  if (magnitude >= 0x477ff000u) return __half{(unsigned short)(sign | 0x7c00u)};  // >= 65520: infinity
  const int exponent = int(magnitude >> 23);  // biased; half's normal range starts at 113 (2^-14)
  if (exponent < 102) return __half{(unsigned short)sign};  // below 2^-25: rounds to zero
  // The result in units of its last place: for a normal half the float's fraction shifted
  // right 13 bits on top of the rebiased exponent; below 2^-14 the significand counted in
  // units of 2^-24. The rounding carry may move into the exponent; that is the right answer.
  unsigned int result, dropped, shift;
  if (exponent >= 113) {
    shift = 13;
    result = (magnitude >> 13) - (112u << 10);
    dropped = magnitude & 0x1fffu;
  } else {
    const unsigned int significand = (magnitude & 0x7fffffu) | 0x800000u;
    shift = unsigned(126 - exponent);
    result = significand >> shift;
    dropped = significand & ((1u << shift) - 1u);
  }
  const unsigned int halfway = 1u << (shift - 1);
  if (dropped > halfway || (dropped == halfway && (result & 1u))) ++result;
  return __half{(unsigned short)(sign | result)};
}
inline __half __float2half(float x) { return __float2half_rn(x); }

inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned int)(h.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  const unsigned int bits = __float_as_uint(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
  const unsigned int dropped = bits & 0xffffu;
  unsigned int result = bits >> 16;
  if (dropped > 0x8000u || (dropped == 0x8000u && (result & 1u))) ++result;  // carry: up to infinity
  return __nv_bfloat16{(unsigned short)result};
}
inline __nv_bfloat16 __float2bfloat16(float x) { return __float2bfloat16_rn(x); }
