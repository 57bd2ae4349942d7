// Table lookups for the 8-bit states' loops (fusedopt/int8_states.h): a code's value when a
// state is read, a bucket's entry when it is written. GCC 12 compiles `table[index[j]]` to
// one scalar load per element: its tuning leaves the AVX2/AVX-512 gather instructions off,
// and it never gathers through byte indices. Here the AVX2 and AVX-512 variants gather
// explicitly (8 or 16 lanes a time) where dispatch.cpp's use_gathers() says so (Intel CPUs),
// and keep the plain loop elsewhere. The same loads either way, so the same bits.
#pragma once

#include <cstdint>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/kernels.h"

namespace fusedopt::cpu::FUSEDOPT_CPU_ISA {

// out[j] = values[codes[j]] * scale: one block of codes dequantized.
inline void gather_dequantize(const uint8_t* __restrict codes, const float* __restrict values, float scale,
                              float* __restrict out, int64_t count) {
  int64_t j = 0;
  const int64_t gathered = use_gathers() ? count : 0;
#if defined(__AVX512F__)
  const __m512 s = _mm512_set1_ps(scale);
  for (; j + 16 <= gathered; j += 16) {
    const __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j)));
    _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_i32gather_ps(index, values, 4), s));
  }
#elif defined(__AVX2__)
  const __m256 s = _mm256_set1_ps(scale);
  for (; j + 8 <= gathered; j += 8) {
    const __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + j)));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_i32gather_ps(values, index, 4), s));
  }
#else
  (void)gathered;
#endif
  for (; j < count; ++j) out[j] = values[codes[j]] * scale;
}

// out[j] = table[index[j]] for 32-bit entries (every index within the table).
inline void gather_entries(const int32_t* __restrict table, const uint32_t* __restrict index, uint32_t* __restrict out,
                           int64_t count) {
  int64_t j = 0;
  const int64_t gathered = use_gathers() ? count : 0;
#if defined(__AVX512F__)
  for (; j + 16 <= gathered; j += 16) {
    const __m512i i = _mm512_loadu_si512(index + j);
    _mm512_storeu_si512(out + j, _mm512_i32gather_epi32(i, table, 4));
  }
#elif defined(__AVX2__)
  for (; j + 8 <= gathered; j += 8) {
    const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j),
                        _mm256_i32gather_epi32(reinterpret_cast<const int*>(table), i, 4));
  }
#else
  (void)gathered;
#endif
  for (; j < count; ++j) out[j] = uint32_t(table[index[j]]);
}

}  // namespace fusedopt::cpu::FUSEDOPT_CPU_ISA
