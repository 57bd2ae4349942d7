// What the tests of the shim and the executor call (tests/test_cuda_host.py): the shim's
// 16-bit conversions, and kernels that check the executor itself: __syncthreads must
// order shared-memory writes before reads for every thread, any number of times; a block
// whose threads do not all meet at the same barrier, a misaligned, null or unmapped access,
// a thread's stack overflow and parameters over the device's limit must fail the launch.
// Written with the launch syntax the rewrite produces (launch.h), compiled with the shim.
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_host/devices.h"

namespace fusedopt::cuda_host {
namespace {

constexpr int kThreads = 256;
constexpr int kRounds = 3;

// Each round, thread t publishes a value and, after the barrier, reads its neighbour's;
// a second barrier keeps the next round's writes after every read.
__global__ void neighbour_exchange(unsigned* out) {
  __shared__ unsigned values[kThreads];
  const unsigned t = threadIdx.x;
  unsigned value = t + 1000u * blockIdx.x;
  for (int round = 0; round < kRounds; ++round) {
    values[t] = value;
    __syncthreads();
    value = values[(t + 1) % kThreads] + 1;
    __syncthreads();
  }
  out[blockIdx.x * kThreads + t] = value;
}

// Half the threads return before the barrier the other half waits at.
__global__ void early_return(unsigned* out) {
  if (threadIdx.x < kThreads / 2) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Two barriers at different places in the code. The stores around each keep the compiler
// from merging the two calls into one.
__global__ void different_barriers(unsigned* out) {
  if (threadIdx.x % 2) {
    out[threadIdx.x] = 1;
    __syncthreads();
    out[threadIdx.x] = 2;
  } else {
    out[threadIdx.x] = 3;
    __syncthreads();
    out[threadIdx.x] = 4;
  }
}

// A 16-byte load 4 bytes past an aligned address: a GPU stops with a misaligned address.
__global__ void misaligned_load(unsigned* out) {
  const uint4* vectors = reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(out) + 4);
  out[threadIdx.x] = vectors[0].x + 1;
}

// Thread 7 stores through a null pointer. (The checks see null itself; an offset from null
// is an address like any other, and an unmapped one faults the process.)
__global__ void null_store(unsigned* out) {
  unsigned* target = threadIdx.x == 7 ? nullptr : out + threadIdx.x;
  *target = 1;
}

// Thread 3 stores to an address no mapping holds: a GPU's illegal address.
__global__ void wild_store(unsigned* out) {
  unsigned* target = threadIdx.x == 3 ? reinterpret_cast<unsigned*>(uintptr_t(64)) : out + threadIdx.x;
  *target = 1;
}

// 4 KB of stack per level, 200 levels deep: more than the executor gives a thread.
__device__ __noinline__ unsigned deep(unsigned n) {
  volatile unsigned char pad[4096];
  pad[n % 4096] = (unsigned char)n;
  return n == 0 ? pad[0] : deep(n - 1) + pad[n % 4096];
}

__global__ void stack_overflow(unsigned* out) { out[threadIdx.x] = deep(200); }

struct LargeParameters {
  unsigned char bytes[5000];
};

// 5,000 bytes of parameters: more than the classic 4,096-byte limit.
__global__ void large_parameters(LargeParameters parameters, unsigned* out) {
  out[threadIdx.x] = parameters.bytes[threadIdx.x % 8] + unsigned(sizeof(parameters.bytes)) - 1u;
}

}  // namespace

std::vector<unsigned> run_selftest(const std::string& name, unsigned blocks, int device) {
  std::vector<unsigned> out(size_t(blocks) * kThreads, 0u);
  void (*kernel)(unsigned*) = nullptr;
  if (name == "neighbour_exchange") kernel = neighbour_exchange;
  else if (name == "early_return") kernel = early_return;
  else if (name == "different_barriers") kernel = different_barriers;
  else if (name == "misaligned_load") kernel = misaligned_load;
  else if (name == "null_store") kernel = null_store;
  else if (name == "wild_store") kernel = wild_store;
  else if (name == "stack_overflow") kernel = stack_overflow;
  else if (name != "large_parameters") throw std::invalid_argument("no self-test named " + name);
  int previous = 0;
  cudaGetDevice(&previous);
  if (cudaSetDevice(device) != cudaSuccess) throw std::invalid_argument("no device " + std::to_string(device));
  if (kernel != nullptr) {
    kernel * LaunchConfig(blocks, kThreads)(out.data());
  } else {
    LargeParameters parameters{};
    parameters.bytes[0] = parameters.bytes[1] = parameters.bytes[2] = 1;
    large_parameters * LaunchConfig(blocks, kThreads)(parameters, out.data());
  }
  cudaSetDevice(previous);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(cudaGetErrorString(error));
  return out;
}

void float_to_half_bits(const float* in, uint16_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = __half_as_ushort(__float2half_rn(in[i]));
}
void float_to_bfloat16_bits(const float* in, uint16_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}
void half_bits_to_float(const uint16_t* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = __half2float(__ushort_as_half(in[i]));
}

}  // namespace fusedopt::cuda_host
