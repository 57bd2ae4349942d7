// The second step of the per-tensor reductions (sum_of_squares.cu, norms.cuh): each tensor's
// block partials added in block order, starting from 0 (fusedopt/reduce.h), by one thread
// per tensor, so the sums have the CPU kernels' bits. Stream work only.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/cuda_utils.cuh"

namespace fusedopt::cuda {

// partials (device memory) holds `terms` float64 values per block, block after block;
// tensor i owns blocks [first_block[i], first_block[i + 1]) (first_block has n + 1 entries)
// and gets out[i * terms + t], the sum of term t of its blocks. terms: 1 or 2.
void add_block_partials(const std::vector<int64_t>& first_block, int terms, const double* partials, double* out,
                        const OpCall& call);

}  // namespace fusedopt::cuda
