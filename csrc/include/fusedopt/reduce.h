// The per-tensor sum of squares, defined once so the CPU loop and the CUDA kernel (and its
// host build) compute the same bits, whatever the thread count: each tensor is cut into
// blocks of kSumBlock elements; inside a block, element j goes to lane j % kSumLanes, each
// lane accumulates its squares in double in index order, and the lanes are added by a fixed
// pairwise tree (lane l += lane l + stride, stride kSumLanes/2 down to 1); the tensor's sum is
// its blocks' partials added in block order, starting from 0. The result is a double: fp32
// (or 16-bit) values squared and accumulated in double lose nothing a float32 norm keeps.
#pragma once

#include <cstdint>

#include "fusedopt/common.h"

namespace fusedopt {

constexpr int64_t kSumBlock = 65536;  // elements per block (one CUDA thread block each)
constexpr int kSumLanes = 256;        // lanes per block (one CUDA thread each)

FUSEDOPT_HD int64_t sum_blocks(int64_t numel) { return (numel + kSumBlock - 1) / kSumBlock; }

// How many lanes a block of `count` elements fills; the others stay 0.
FUSEDOPT_HD int lanes_used(int64_t count) { return count < kSumLanes ? int(count) : kSumLanes; }

// The lane tree, in place; lanes[0] ends with the block's partial. Only lanes [0, used) are
// read: the others count as 0, whose additions the tree skips, which changes no bit of a sum
// of squares (x + 0 is x for every x >= 0, inf and NaN). A block of a few elements, as a
// thousand tiny params give, then costs a few additions instead of 255 and two kilobytes
// of zeroing.
FUSEDOPT_HD void lane_tree(double* lanes, int used = kSumLanes) {
  for (int stride = kSumLanes / 2; stride > 0; stride /= 2) {
    for (int l = 0; l + stride < used; ++l) lanes[l] += lanes[l + stride];
    used = used < stride ? used : stride;
  }
}

}  // namespace fusedopt
