// The update of any optimizer with 8-bit states (state_dtype="int8"; fusedopt/int8_states.h)
// on the GPU: the op multi_tensor_apply runs over every chunk, with the bits of the CPU's
// update_int8_slice (cpu/update_cpu.h). Chunks are whole quantization blocks (a chunk is a
// multiple of 512 elements, kChunkGranuleBytes / 8). Each pass over a chunk takes kRound
// elements: thread t holds the kPerThread consecutive elements from t * kPerThread, so warp w
// holds exactly quantization block w of the pass. A thread dequantizes its elements'
// states, updates them as the CPU loop does, and writes the param; the block's absmax is the
// maximum of its 32 threads' partials, exchanged through shared memory (no warp shuffle: the
// host build of these kernels, csrc/cuda_host, runs threads one at a time and has only
// __syncthreads); then each thread requantizes its elements and lane 0 writes the absmax.
//
// Not yet run on a GPU: the element accesses are scalar (8 consecutive elements a thread,
// cached lines shared by the warp's loads), not the 16-byte vectors of UpdateChunkOp.
#pragma once

#include <type_traits>

#include "cuda/cuda_ops.h"
#include "cuda/element_access.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "fusedopt/int8_states.h"

namespace fusedopt::cuda {

constexpr int kInt8PerThread = int(kQuantBlock / 32);               // a warp per quantization block
constexpr int64_t kInt8Round = int64_t(kThreadsPerBlock) * kInt8PerThread;  // elements per pass
static_assert((kChunkGranuleBytes / 8) % kQuantBlock == 0, "a chunk of any dtype is whole quantization blocks");

// kMasterWeights_: a float32 master copy holds the value; kStochastic_: bf16 params without
// one rounded stochastically (as UpdateChunkOp).
template <typename Kind, typename S, bool kMasterWeights_, bool kStochastic_ = false>
struct UpdateInt8ChunkOp {
  using Storage = S;
  using T = typename OpMath<S>::type;
  static_assert(std::is_same_v<T, float>, "8-bit states are for float32 math");
  using Coefficients = Scalars<Kind, T>;
  static constexpr bool kMasterWeights = kMasterWeights_;
  static constexpr bool kStochastic = kStochastic_;
  static constexpr bool kPerTensorRecord = Kind::kStepDependent;
  static constexpr int kScalarStates = Kind::kScalarStates;
  // Record slots: param, grad, the coefficient record (kPerTensorRecord), the active states'
  // codes in table order, then the master copy (or the stochastic rounding's column), the
  // tensor clip and tensor scale where the call has them, then the states' absmax.
  static constexpr int kParamSlot = 0, kGradSlot = 1, kStateSlot = 2 + int(kPerTensorRecord);
  static constexpr int kSlots = kStateSlot + 2 * Kind::kStates + 2 + int(Kind::kTensorScale);
  static_assert(kSlots <= kMaxAddresses, "more addresses than a record carries");
  // Eight elements of every list a thread in registers: ptxas is given up to 128 registers.
  static constexpr int kMinBlocks = 2;

  UpdateConfig<Kind> config;
  struct NoSharedRecord {};
  std::conditional_t<kPerTensorRecord, NoSharedRecord, SharedPrepared<Coefficients>> shared;
  int8_t tensor_clip_slot = -1;
  int8_t tensor_scale_slot = -1;
  int8_t column_slot = -1;
  int8_t absmax_slot = -1;  // the first state's absmax; the others follow

  __device__ __forceinline__ Coefficients coefficients(double step, float* const* scalar_states) const {
    return scalars<Kind, T>(config, step, scalar_states);
  }

  __device__ __forceinline__ const Prepared<Coefficients>& prepared(const TensorChunk<kSlots>& tensor) const {
    if constexpr (kPerTensorRecord) return *static_cast<const Prepared<Coefficients>*>(tensor.address[2]);
    else return shared.get();
  }

  __device__ __forceinline__ void operator()(const TensorChunk<kSlots>& tensor, const Coefficients& c) const {
    with_variant(typename Kind::Variants{}, Kind::active_states(config.hyper), [&](auto variant) {
      run<decltype(variant)::value>(tensor, c);
    });
  }

  template <uint32_t kActive>
  __device__ __forceinline__ void run(const TensorChunk<kSlots>& tensor, const Coefficients& c) const {
    constexpr int kRows = state_count(kActive);
    __shared__ uint32_t partial[kMaxStates][kThreadsPerBlock];
    const UpdateOptions& options = config.options;
    const bool first_step = skips_state_loads<Kind>(options);
    const bool write_grad = writes_grad(options.grad_transform);
    const Int8Codes codes = int8_codes(options.int8_tables, options.int8_signed, kRows);
    S* param = static_cast<S*>(tensor.address[kParamSlot]);
    S* grads = static_cast<S*>(tensor.address[kGradSlot]);
    float* master = kMasterWeights ? static_cast<float*>(tensor.at(kStateSlot + kRows)) : nullptr;
    uint8_t* state_codes[kMaxStates] = {};
    float* absmax[kMaxStates] = {};
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      state_codes[r] = static_cast<uint8_t*>(tensor.at(kStateSlot + r));
      absmax[r] = static_cast<float*>(tensor.at(absmax_slot + r));
    }
    auto k = c.k;
    if constexpr (Kind::kTensorScale) {
      if (tensor_scale_slot >= 0) Kind::scale_coefficients(k, *static_cast<const double*>(tensor.at(tensor_scale_slot)));
    }
    GradFactors<T> grad = c.grad;
    if (tensor_clip_slot >= 0) grad.multiplier = math_value<T>(tensor.at(tensor_clip_slot));
    uint32_t key = 0;
    if constexpr (kStochastic)
      key = rounding_key(options.round_seed, int64_t(reinterpret_cast<uintptr_t>(tensor.at(column_slot))));
    const int lane = int(threadIdx.x) % 32;
    const int warp_first = int(threadIdx.x) - lane;
    // Every thread makes the same passes (the barriers below need all of them).
    for (int64_t base = tensor.begin; base < tensor.end; base += kInt8Round) {
      const int64_t first = base + int64_t(threadIdx.x) * kInt8PerThread;
      const int64_t block = first / kQuantBlock;
      float values[kMaxStates][kInt8PerThread];
#pragma unroll
      for (int e = 0; e < kInt8PerThread; ++e) {
        const int64_t j = first + e;
        const bool inside = j < tensor.end;
        T s[kMaxStates] = {T(0), T(0), T(0), T(0)};
#pragma unroll
        for (int state = 0; state < Kind::kStates; ++state) {
          if (!((kActive >> state) & 1u)) continue;
          const int r = state_position(kActive, state);
          if (inside && !first_step) s[state] = dequantized(state_codes[r][j], absmax[r][block], codes.row[r]);
        }
        T p = T(0), g = T(0);
        if (inside) {
          p = kMasterWeights ? master[j] : to_math(param[j]);
          g = unscaled_grad(T(to_math(grads[j])), grad);
        }
        Kind::template update<kActive>(p, g, s, k, first_step);
        if (inside) {
          if constexpr (kStochastic) {
            param[j] = float_to_bf16_stochastic(p, rounding_bits(key, j));
          } else {
            if (kMasterWeights) master[j] = p;
            param[j] = from_math<S>(p);
          }
          if (write_grad) grads[j] = from_math<S>(g);
        }
#pragma unroll
        for (int state = 0; state < Kind::kStates; ++state) {
          if (!((kActive >> state) & 1u)) continue;
          values[state_position(kActive, state)][e] = inside ? s[state] : 0.0f;  // 0 moves no absmax
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        uint32_t largest = 0;
#pragma unroll
        for (int e = 0; e < kInt8PerThread; ++e) {
          const uint32_t bits = absmax_bits_of(values[r][e]);
          largest = bits > largest ? bits : largest;
        }
        partial[r][threadIdx.x] = largest;
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        uint32_t largest = 0;
        for (int l = 0; l < 32; ++l) {  // the same address for the whole warp: a broadcast
          const uint32_t bits = partial[r][warp_first + l];
          largest = bits > largest ? bits : largest;
        }
        const float scale = absmax_from_bits(largest);
        if (first < tensor.end) {
          const uint32_t zero = zero_code(codes.row[r]);
#pragma unroll
          for (int e = 0; e < kInt8PerThread; ++e) {
            if (first + e >= tensor.end) break;
            state_codes[r][first + e] =
                uint8_t(scale == 0.0f ? zero : nearest_code(values[r][e] / scale, codes.row[r]));
          }
          if (lane == 0) absmax[r][block] = scale;
        }
      }
      __syncthreads();  // the partials are rewritten by the next pass
    }
  }
};

}  // namespace fusedopt::cuda
