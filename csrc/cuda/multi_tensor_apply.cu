// The step-counter increment that precedes every Adam and RMSprop update.
#include "cuda/multi_tensor_apply.cuh"

namespace fusedopt::cuda {
namespace {

constexpr int kStepThreadsPerBlock = 128;

template <int64_t kParameterLimit>
__global__ void __launch_bounds__(kStepThreadsPerBlock)
    increment_step_counters_kernel(const __grid_constant__ StepCounterArgs<kParameterLimit> args) {
  const int i = int(blockIdx.x) * kStepThreadsPerBlock + int(threadIdx.x);
  if (i < args.count && !step_skipped(args.transform)) *args.counters[i] += 1.0f;
}

template <int64_t kParameterLimit>
void increment_with(const TensorTable& table, const GradTransform& transform, const OpCall& call) {
  using Args = StepCounterArgs<kParameterLimit>;
  Args args;  // only counters[0 .. count) is meaningful
  args.transform = transform;
  args.count = 0;
  const auto launch = [&] {
    const unsigned blocks = unsigned((args.count + kStepThreadsPerBlock - 1) / kStepThreadsPerBlock);
    increment_step_counters_kernel<kParameterLimit><<<blocks, kStepThreadsPerBlock, 0, call.stream()>>>(args);
    call.check_launch();
    args.count = 0;
  };
  for (int64_t i = 0; i < table.n; ++i) {  // zero-size tensors too: torch advances their step as well
    args.counters[args.count++] = table.ptr<float>(kStepRow, i);
    if (args.count == Args::kCapacity) launch();
  }
  if (args.count > 0) launch();
}

}  // namespace

void increment_step_counters(const TensorTable& table, const GradTransform& transform, const OpCall& call) {
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  if (call.large_parameter_blocks() && table.n > StepCounterArgs<kClassicParameterLimit>::kCapacity) {
    increment_with<kLargeParameterLimit>(table, transform, call);
    return;
  }
#endif
  increment_with<kClassicParameterLimit>(table, transform, call);
}

}  // namespace fusedopt::cuda
