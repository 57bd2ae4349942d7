// Moving one chunk's elements between global memory and registers. An op hands
// update_elements the lists of a tensor (param, grad, states, master copy) and a function
// that updates one element's values in the math type; update_elements picks the access
// path: vector loads and stores when every list of the tensor is aligned for them,
// element-wise access otherwise (params that are views at odd offsets). Indices are 64-bit
// throughout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/launch_plan.h"
#include "fusedopt/common.h"

namespace fusedopt::cuda {

// ---- storage <-> math type ---------------------------------------------------------------
// The GPU's conversion instructions; the rounding (to nearest even) is that of the
// portable conversions in fusedopt/common.h, which take a dozen integer operations.
__device__ __forceinline__ float to_math(float x) { return x; }
__device__ __forceinline__ double to_math(double x) { return x; }
__device__ __forceinline__ float to_math(Half x) { return __half2float(__ushort_as_half(x.bits)); }
__device__ __forceinline__ float to_math(BFloat16 x) { return __uint_as_float(uint32_t(x.bits) << 16); }

template <typename E> __device__ __forceinline__ E from_math(typename OpMath<E>::type x);
template <> __device__ __forceinline__ float from_math<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_math<double>(double x) { return x; }
template <> __device__ __forceinline__ Half from_math<Half>(float x) {
  return Half{__half_as_ushort(__float2half_rn(x))};
}
template <> __device__ __forceinline__ BFloat16 from_math<BFloat16>(float x) {
  return BFloat16{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
}

// How the param list (list 0) is rounded when stored: to nearest even, or, with kStochastic
// (bf16_stochastic_round, bf16 params without a master copy), by fusedopt/common.h's
// float_to_bf16_stochastic with the random bits of each element's index in its tensor
// under the tensor's rounding key.
template <bool kStochastic>
struct ParamRounding {
  uint32_t key = 0;
};

// ---- the lists of one tensor -------------------------------------------------------------
// What an op reads and writes for one tensor. The first kParamLists lists (param, grad)
// are stored as the param's dtype S, the states as the state dtype SS (S itself, float32
// for a 16-bit param with master weights, or bfloat16 with bf16 states) and the last list
// (the master copy) as MS: float32 with master weights, else SS (and then unused). List l lives at
// data[l] (nullptr when the op's options leave it out), is loaded before the update if
// bit l of `loads` is set (not for a write-only list, such as SGD's new momentum buffer)
// and stored after it if bit l of `stores` is (not for read-only lists, such as the
// gradient when the step does not write it back). A list neither loaded nor stored costs
// no memory traffic. (The flags are bit masks, two registers, rather than bool arrays.)
template <typename S, typename SS, int kLists, typename MS = SS>
struct ElementLists {
  static_assert(kLists <= 32, "one bit per list");
  static constexpr int kParamLists = 2;
  void* data[kLists] = {};
  uint32_t loads = 0;
  uint32_t stores = 0;

  __device__ __forceinline__ void set(int l, void* address, bool load_it, bool store_it) {
    data[l] = address;
    loads |= uint32_t(load_it && address != nullptr) << l;
    stores |= uint32_t(store_it && address != nullptr) << l;
  }
  __device__ __forceinline__ bool load(int l) const { return (loads >> l) & 1u; }
  __device__ __forceinline__ bool store(int l) const { return (stores >> l) & 1u; }
};

// Elements of every list one thread moves per vector access: 16 bytes of the widest of
// the storage types (so a 16-bit list with float32 states moves 8 bytes at a time).
template <typename S, typename SS, typename MS = SS>
constexpr int kVectorWidth = int(kVectorBytes / (sizeof(S) > sizeof(SS) ? (sizeof(S) > sizeof(MS) ? sizeof(S) : sizeof(MS))
                                                                         : (sizeof(SS) > sizeof(MS) ? sizeof(SS) : sizeof(MS))));

// kWidth consecutive elements of type E, as one 16-byte (or, for the 16-bit lists beside
// float32 states, 8-byte) access, kept in registers in their storage form: a thread
// converts one element at a time to the math type and back, so a vector of eight 16-bit
// values occupies four registers, not eight floats' worth.
template <typename E, int kWidth>
struct RawVector {
  static constexpr int kWords = int(kWidth * sizeof(E) / 4);
  static_assert(kWords == 2 || kWords == 4, "one 8- or 16-byte access");
  uint32_t word[kWords];  // indexed by constants only (loops unrolled): stays in registers

  __device__ __forceinline__ void load(const void* data, int64_t v) {
    if constexpr (kWords == 4) {
      const uint4 bits = static_cast<const uint4*>(data)[v];
      word[0] = bits.x, word[1] = bits.y, word[2] = bits.z, word[3] = bits.w;
    } else {
      const uint2 bits = static_cast<const uint2*>(data)[v];
      word[0] = bits.x, word[1] = bits.y;
    }
  }
  __device__ __forceinline__ void store(void* data, int64_t v) const {
    if constexpr (kWords == 4) static_cast<uint4*>(data)[v] = make_uint4(word[0], word[1], word[2], word[3]);
    else static_cast<uint2*>(data)[v] = make_uint2(word[0], word[1]);
  }
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int w = 0; w < kWords; ++w) word[w] = 0;
  }

  // Element e (a constant) in the math type, and back.
  __device__ __forceinline__ typename OpMath<E>::type get(int e) const {
    if constexpr (sizeof(E) == 2) return to_math(E{uint16_t(word[e / 2] >> (16 * (e % 2)))});
    else if constexpr (sizeof(E) == 4) return __uint_as_float(word[e]);
    else return __hiloint2double(int(word[2 * e + 1]), int(word[2 * e]));
  }
  // A 16-bit element's bits, already rounded (two per 32-bit word).
  __device__ __forceinline__ void set_bits(int e, uint32_t bits) {
    const uint32_t shift = 16 * (e % 2);
    word[e / 2] = (word[e / 2] & ~(0xffffu << shift)) | (bits << shift);
  }
  __device__ __forceinline__ void set(int e, typename OpMath<E>::type x) {
    if constexpr (sizeof(E) == 2) {
      set_bits(e, from_math<E>(x).bits);
    } else if constexpr (sizeof(E) == 4) {
      word[e] = __float_as_uint(x);
    } else {
      word[2 * e] = uint32_t(__double2loint(x));
      word[2 * e + 1] = uint32_t(__double2hiint(x));
    }
  }
};

// Elements [begin, end) one at a time, a few per thread per pass (as many as a 16-byte
// vector of the math type holds: the registers the vector path uses), all loads of a pass
// before its stores, so that each thread keeps several loads in flight.
template <typename S, typename SS, int kLists, typename MS, typename Update, bool kStochastic>
__device__ __forceinline__ void update_scalars(const ElementLists<S, SS, kLists, MS>& lists, int64_t begin,
                                               int64_t end, const Update& update,
                                               const ParamRounding<kStochastic>& rounding) {
  using T = typename OpMath<S>::type;
  constexpr int kParamLists = ElementLists<S, SS, kLists, MS>::kParamLists;
  constexpr int kIlp = int(kVectorBytes / sizeof(T));
  for (int64_t base = begin + threadIdx.x; base < end; base += int64_t(kThreadsPerBlock) * kIlp) {
    T values[kIlp][kLists];
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int64_t i = base + int64_t(e) * kThreadsPerBlock;
#pragma unroll
      for (int l = 0; l < kLists; ++l) {
        values[e][l] = T(0);
        if (i < end && lists.load(l))
          values[e][l] = l < kParamLists ? T(to_math(static_cast<const S*>(lists.data[l])[i]))
                         : l == kLists - 1 ? T(to_math(static_cast<const MS*>(lists.data[l])[i]))
                                           : T(to_math(static_cast<const SS*>(lists.data[l])[i]));
      }
    }
#pragma unroll
    for (int e = 0; e < kIlp; ++e)
      if (base + int64_t(e) * kThreadsPerBlock < end) update(values[e]);
#pragma unroll
    for (int e = 0; e < kIlp; ++e) {
      const int64_t i = base + int64_t(e) * kThreadsPerBlock;
#pragma unroll
      for (int l = 0; l < kLists; ++l) {
        if (i >= end || !lists.store(l)) continue;
        if constexpr (kStochastic) {
          if (l == 0) {
            static_cast<S*>(lists.data[l])[i] = float_to_bf16_stochastic(values[e][l], rounding_bits(rounding.key, i));
            continue;
          }
        }
        if (l < kParamLists) static_cast<S*>(lists.data[l])[i] = from_math<S>(values[e][l]);
        else if (l == kLists - 1) static_cast<MS*>(lists.data[l])[i] = from_math<MS>(values[e][l]);
        else static_cast<SS*>(lists.data[l])[i] = from_math<SS>(values[e][l]);
      }
    }
  }
}

// The vectors [first, last) of every list (vector v holds elements [v * kWidth,
// (v + 1) * kWidth)); every list must be aligned to its vector size.
template <typename S, typename SS, int kLists, typename MS, typename Update, bool kStochastic>
__device__ __forceinline__ void update_vectors(const ElementLists<S, SS, kLists, MS>& lists, int64_t first,
                                               int64_t last, const Update& update,
                                               const ParamRounding<kStochastic>& rounding) {
  using T = typename OpMath<S>::type;
  constexpr int kParamLists = ElementLists<S, SS, kLists, MS>::kParamLists;
  constexpr int kWidth = kVectorWidth<S, SS, MS>;
  for (int64_t v = first + threadIdx.x; v < last; v += kThreadsPerBlock) {
    RawVector<S, kWidth> params[kParamLists];
    RawVector<SS, kWidth> states[kLists - kParamLists];  // the last one unused: the master list is `master`
    RawVector<MS, kWidth> master;
#pragma unroll
    for (int l = 0; l < kLists; ++l) {
      if (l < kParamLists) {
        if (lists.load(l)) params[l].load(lists.data[l], v);
        else params[l].clear();
      } else if (l == kLists - 1) {
        if (lists.load(l)) master.load(lists.data[l], v);
        else master.clear();
      } else {
        if (lists.load(l)) states[l - kParamLists].load(lists.data[l], v);
        else states[l - kParamLists].clear();
      }
    }
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      T element[kLists];
#pragma unroll
      for (int l = 0; l < kLists; ++l)
        element[l] = l < kParamLists ? params[l].get(e) : l == kLists - 1 ? master.get(e) : states[l - kParamLists].get(e);
      update(element);
#pragma unroll
      for (int l = 0; l < kLists; ++l) {
        if (!lists.store(l)) continue;
        if constexpr (kStochastic) {
          if (l == 0) {
            params[0].set_bits(e, float_to_bf16_stochastic(element[0], rounding_bits(rounding.key, v * kWidth + e)).bits);
            continue;
          }
        }
        if (l < kParamLists) params[l].set(e, element[l]);
        else if (l == kLists - 1) master.set(e, element[l]);
        else states[l - kParamLists].set(e, element[l]);
      }
    }
#pragma unroll
    for (int l = 0; l < kLists; ++l) {
      if (!lists.store(l)) continue;
      if (l < kParamLists) params[l].store(lists.data[l], v);
      else if (l == kLists - 1) master.store(lists.data[l], v);
      else states[l - kParamLists].store(lists.data[l], v);
    }
  }
}

// Applies update(values) to the elements [begin, end) of the lists, `begin` being a chunk
// boundary (a multiple of the vector width), storing the param list as `rounding` says. Every thread of the block must call it.
template <typename S, typename SS, int kLists, typename MS, typename Update, bool kStochastic>
__device__ __forceinline__ void update_elements(const ElementLists<S, SS, kLists, MS>& lists, int64_t begin,
                                                int64_t end, const Update& update,
                                                const ParamRounding<kStochastic>& rounding) {
  static_assert(!kStochastic || (std::is_same_v<S, BFloat16> && std::is_same_v<MS, SS>),
                "stochastic rounding: bf16 params without a master copy");
  constexpr int kParamLists = ElementLists<S, SS, kLists, MS>::kParamLists;
  constexpr int64_t kWidth = kVectorWidth<S, SS, MS>;
  bool aligned = true;
#pragma unroll
  for (int l = 0; l < kLists; ++l) {
    const uint64_t vector_bytes = kWidth * (l < kParamLists ? sizeof(S) : l == kLists - 1 ? sizeof(MS) : sizeof(SS));
    aligned &= reinterpret_cast<uintptr_t>(lists.data[l]) % vector_bytes == 0;  // nullptr counts as aligned
  }
  if (aligned) {
    // Whole vectors, then the tensor's last few elements (in its last chunk only).
    const int64_t vectors_end = begin + (end - begin) / kWidth * kWidth;
    update_vectors(lists, begin / kWidth, vectors_end / kWidth, update, rounding);
    begin = vectors_end;
  }
  update_scalars(lists, begin, end, update, rounding);
}

}  // namespace fusedopt::cuda
