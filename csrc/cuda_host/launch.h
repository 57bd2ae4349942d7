// Kernel launches of the host build. The build rewrites every `kernel<<<config>>>(args)`
// of csrc/cuda into `kernel * ::fusedopt::cuda_host::LaunchConfig(config)(args)`
// (rewrite_launches.py): the call collects the arguments, and operator* converts them to
// the kernel's parameter types, as a launch copies them into the parameter block, and has
// the executor run the grid.
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "cuda_host/builtins.h"
#include "cuda_host/runtime_api.h"

namespace fusedopt::cuda_host {

struct LaunchConfig;

template <typename... Args>
struct PendingLaunch {
  const LaunchConfig& config;
  std::tuple<Args...> args;
};

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;

  LaunchConfig(dim3 grid_, dim3 block_, size_t shared_bytes_ = 0, cudaStream_t stream_ = nullptr)
      : grid(grid_), block(block_), shared_bytes(shared_bytes_), stream(stream_) {}

  template <typename... Args>
  PendingLaunch<std::decay_t<Args>...> operator()(Args&&... args) const {
    return {*this, std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
  }
};

// Runs run(context) once per thread of every block of the grid, threads as fibers that
// meet at __syncthreads (executor.cpp). Errors (a bad configuration, parameters over the
// device's limit, a divergent barrier) are left for cudaGetLastError, as on a GPU.
// `parameters` names the parameter types, for the launch log.
void execute(const LaunchConfig& config, size_t parameter_bytes, const std::type_info& parameters,
             void (*run)(void* context), void* context);

// Bytes of the kernel parameter block: each parameter at its alignment, in order.
template <typename... Parameters>
constexpr size_t parameter_block_bytes() {
  size_t bytes = 0;
  ((bytes = (bytes + alignof(Parameters) - 1) / alignof(Parameters) * alignof(Parameters) + sizeof(Parameters)), ...);
  return bytes;
}

template <typename... Parameters, typename... Args>
void operator*(void (*kernel)(Parameters...), PendingLaunch<Args...>&& launch) {
  static_assert(sizeof...(Parameters) == sizeof...(Args), "a kernel launched with the wrong number of arguments");
  using Block = std::tuple<std::remove_cv_t<Parameters>...>;
  struct Call {
    void (*kernel)(Parameters...);
    Block parameters;
  };
  // Every thread receives its own copy of the block, as its parameters by value.
  Call call{kernel, Block(std::move(launch.args))};
  execute(
      launch.config, parameter_block_bytes<std::remove_cv_t<Parameters>...>(), typeid(Block),
      [](void* context) {
        Call& c = *static_cast<Call*>(context);
        std::apply(c.kernel, c.parameters);
      },
      &call);
}

}  // namespace fusedopt::cuda_host
