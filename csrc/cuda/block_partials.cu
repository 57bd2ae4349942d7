// The per-tensor sums of block partials (block_partials.h).
#include <stdexcept>

#include "cuda/block_partials.h"
#include "cuda/launch_plan.h"

namespace fusedopt::cuda {
namespace {

// The kernel's parameters: tensors [first, first + count) of the table, whose blocks are
// [offsets[i], offsets[i + 1]).
constexpr int kFinalThreads = 128;
constexpr int kMaxTerms = 2;
struct FinalSumArgs {
  static constexpr int kCapacity = int((kClassicParameterLimit - 64) / 8) - 1;
  const double* partials;
  double* out;
  int64_t first;
  int32_t count;
  int32_t terms;
  int64_t offsets[kCapacity + 1];
};
static_assert(sizeof(FinalSumArgs) <= kClassicParameterLimit, "fits every GPU's parameter block");

__global__ void __launch_bounds__(kFinalThreads) final_sum_kernel(const __grid_constant__ FinalSumArgs args) {
  const int i = int(blockIdx.x) * kFinalThreads + int(threadIdx.x);
  if (i >= args.count) return;
  for (int t = 0; t < args.terms; ++t) {
    double sum = 0.0;
    for (int64_t b = args.offsets[i]; b < args.offsets[i + 1]; ++b) sum += args.partials[b * args.terms + t];
    args.out[(args.first + i) * args.terms + t] = sum;
  }
}

}  // namespace

void add_block_partials(const std::vector<int64_t>& first_block, int terms, const double* partials, double* out,
                        const OpCall& call) {
  if (terms < 1 || terms > kMaxTerms) throw std::invalid_argument("fusedopt cuda: 1 or 2 partial terms per block");
  const int64_t n = int64_t(first_block.size()) - 1;
  for (int64_t start = 0; start < n; start += FinalSumArgs::kCapacity) {
    FinalSumArgs args;
    args.partials = partials;
    args.out = out;
    args.first = start;
    args.count = int32_t(n - start < FinalSumArgs::kCapacity ? n - start : FinalSumArgs::kCapacity);
    args.terms = terms;
    for (int32_t i = 0; i <= args.count; ++i) args.offsets[i] = first_block[size_t(start + i)];
    const unsigned blocks = unsigned((args.count + kFinalThreads - 1) / kFinalThreads);
    final_sum_kernel<<<blocks, kFinalThreads, 0, call.stream()>>>(args);
    call.check_launch();
  }
}

}  // namespace fusedopt::cuda
