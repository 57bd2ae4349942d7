// describe_launch_plan: the launcher's planner run on the host alone, for the tests.
#include <stdexcept>
#include <string>

#include "cuda/cuda_ops.h"
#include "cuda/launch_plan.h"

namespace fusedopt::cuda {

int64_t default_chunk_bytes() { return kDefaultChunkBytes; }

LaunchPlanSummary describe_launch_plan(const std::vector<int64_t>& numels, int64_t tensor_lists,
                                       int64_t element_bytes, bool large_parameter_block, int64_t chunk_bytes) {
  const int64_t chunk = chunk_elements(chunk_bytes == 0 ? kDefaultChunkBytes : chunk_bytes, element_bytes);
  if (tensor_lists < 1 || tensor_lists > kMaxAddresses)
    throw std::invalid_argument("fusedopt cuda: tensor_lists must be 1 to " + std::to_string(kMaxAddresses));
  const int64_t n = int64_t(numels.size());
  for (int64_t numel : numels)
    if (numel < 0) throw std::invalid_argument("fusedopt cuda: negative element count");

  // A table whose row 0 holds the element counts and whose carried rows 1..tensor_lists
  // hold each tensor's own index, so the filled parameter blocks say which tensor each
  // record belongs to.
  std::vector<int64_t> data(size_t((1 + tensor_lists) * n));
  for (int64_t i = 0; i < n; ++i) {
    data[size_t(i)] = numels[size_t(i)];
    for (int64_t row = 1; row <= tensor_lists; ++row) data[size_t(row * n + i)] = i;
  }
  const TensorTable table{data.data(), n};
  const auto address_of = [&](int64_t i, int slot) { return uint64_t(data[size_t((1 + slot) * n + i)]); };
  const int addresses = int(tensor_lists);

  LaunchPlanSummary summary;
  summary.chunk_elements = chunk;
  const auto record = [&](const auto& args) {
    summary.parameter_block_limit = args.kLimit;
    ++summary.launches;
    summary.tensors_per_launch.push_back(args.tensors);
    summary.chunks_per_launch.push_back(args.chunks);
    summary.parameter_bytes_per_launch.push_back(args.used_bytes());
    for (int t = 0; t < args.tensors; ++t) {
      summary.tensor_index.push_back(int64_t(args.address(t, 0)));
      summary.first_chunk.push_back(args.first_chunk(t));
    }
  };
#if FUSEDOPT_LARGE_PARAMETER_BLOCKS
  const bool large = large_parameter_block && needs_large_parameter_block(table, addresses, chunk);
#else
  (void)large_parameter_block;  // this build has the classic layout only
  const bool large = false;
#endif
  if (large) plan_launches<kLargeParameterLimit>(table, address_of, addresses, chunk, record);
  else plan_launches<kClassicParameterLimit>(table, address_of, addresses, chunk, record);
  if (summary.launches == 0) summary.parameter_block_limit = large ? kLargeParameterLimit : kClassicParameterLimit;
  return summary;
}

}  // namespace fusedopt::cuda
