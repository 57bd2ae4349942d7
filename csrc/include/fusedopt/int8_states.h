// Blockwise dynamic 8-bit optimizer states (state_dtype="int8"), element by element, for the
// CPU loops and the CUDA kernels alike. fusedopt/_quantize.py is the specification (blocks of
// kQuantBlock elements in memory order, a float32 absmax per block, a uint8 code per element);
// fusedopt/_code_lookup.py builds the tables this header reads and states why one bucket
// lookup and one comparison give the specification's code.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fusedopt/common.h"

namespace fusedopt {

constexpr int64_t kQuantBlock = 256;  // elements per absmax (_quantize.BLOCK_SIZE)

// The bucket of a float32 q: its sign, exponent and top 7 mantissa bits (its upper 16 bits);
// magnitudes below 2^-26 share the first 128 buckets of their sign (_code_lookup.bucket).
constexpr uint32_t kBucketMinExponent = 101;
constexpr uint32_t kBucketMantissaBits = 7;
constexpr uint32_t kBucketsPerSign = (127 - kBucketMinExponent + 2) << kBucketMantissaBits;
// One code's bytes in the tables Python passes (_code_lookup.native_tables): 256 float32
// values, then one int32 entry per bucket; unsigned code first.
constexpr int64_t kCodeBytes = 256 * 4 + 4 * 2 * kBucketsPerSign;

struct Int8Code {
  const float* values;     // the 256 values of the code, sorted
  const int32_t* buckets;  // per bucket: the boundaries below it and the one inside (_code_lookup)
};

FUSEDOPT_HD Int8Code int8_code(const uint8_t* tables, bool is_signed) {
  const uint8_t* base = tables + (is_signed ? kCodeBytes : 0);
  return Int8Code{reinterpret_cast<const float*>(base), reinterpret_cast<const int32_t*>(base + 1024)};
}

// As integer operations on q's upper 16 bits h (no multiply, no branch: the CPU loop
// vectorises): magnitude bits h & 0x7fff, those below exponent kBucketMinExponent - 1 raised
// to it (all of them tiny), made relative to it, and clamped to the sign's last bucket (only a
// NaN gets there, whose code is 0 anyway); the negative half after the positive.
FUSEDOPT_HD uint32_t code_bucket(float q) {
  const uint32_t upper = float_bits(q) >> 16;
  constexpr uint32_t kFloor = (kBucketMinExponent - 1) << kBucketMantissaBits;
  const uint32_t magnitude = upper & 0x7fffu;
  uint32_t local = (magnitude > kFloor ? magnitude : kFloor) - kFloor;
  local = local < kBucketsPerSign - 1 ? local : kBucketsPerSign - 1;
  return local + ((0u - (upper >> 15)) & kBucketsPerSign);
}

// The code of q = x / absmax: the number of boundaries strictly below q (the nearest value, a
// tie to the lower index); NaN q gets 0 (its bucket, each sign's last, which no |q| <= 1
// reaches, has entry 0). The bucket's entry counts the boundaries below it; a boundary inside
// it shares q's upper 16 bits, so b < q compares the lower 16: as integers for q >= 0,
// reversed for q < 0 (flipping all 16 bits reverses their order).
// code_in_bucket is that rule given q's bits and its bucket's entry (the CPU loops look the
// entries up between two vectorised loops, csrc/cpu/table_gather.h).
FUSEDOPT_HD uint32_t code_in_bucket(uint32_t bits, uint32_t entry) {
  const uint32_t flip = (0u - (bits >> 31)) & 0xffffu;
  const int32_t low = int32_t((bits & 0xffffu) ^ flip), boundary_low = int32_t((entry & 0xffffu) ^ flip);
  return ((entry >> 16) & 0xffu) + ((entry >> 24) & uint32_t(low > boundary_low));
}
FUSEDOPT_HD uint32_t nearest_code(float q, const int32_t* buckets) {
  return code_in_bucket(float_bits(q), uint32_t(buckets[code_bucket(q)]));
}
FUSEDOPT_HD uint32_t nearest_code(float q, const Int8Code& code) { return nearest_code(q, code.buckets); }

// max |x| of a block's values, as the bits of the float32 result: |x|'s bits (sign cleared)
// order as the magnitudes do, and a NaN's bits lie above +inf's (0x7f800000), so the
// integer maximum is the float maximum, NaN-propagating as torch.amax is, and vectorises.
FUSEDOPT_HD uint32_t absmax_bits_of(float x) { return float_bits(x) & 0x7fffffffu; }
FUSEDOPT_HD float absmax_from_bits(uint32_t largest) {
  return largest > 0x7f800000u ? bits_float(0x7fc00000u) : bits_float(largest);  // NaN: the quiet NaN
}

// The code an all-zero block (absmax 0) stores everywhere: the index of 0.0.
FUSEDOPT_HD uint32_t zero_code(const Int8Code& code) { return nearest_code(0.0f, code); }

FUSEDOPT_HD float dequantized(uint8_t c, float absmax, const Int8Code& code) { return code.values[c] * absmax; }

// Whether the storage dispatch_storage picked (param S, states SS, a master copy) is one the
// 8-bit loops are compiled for: float32 math, and the states' storage chosen without
// bf16_states (the entry points refuse float64 params and bf16 states with 8-bit states first).
template <typename S, typename SS, bool kMaster>
constexpr bool int8_storage() {
  return std::is_same_v<typename OpMath<S>::type, float> &&
         (std::is_same_v<SS, S> || (kMaster && std::is_same_v<SS, float>));
}

// Per state row k of an 8-bit call: its code (bit k of `signed_rows`: the signed code).
struct Int8Codes {
  Int8Code row[4];
};
FUSEDOPT_HD Int8Codes int8_codes(const uint8_t* tables, uint32_t signed_rows, int rows) {
  Int8Codes c{};
  for (int k = 0; k < rows && k < 4; ++k) c.row[k] = int8_code(tables, (signed_rows >> k) & 1u);
  return c;
}

}  // namespace fusedopt
