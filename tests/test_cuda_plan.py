"""The CUDA launcher's plan, checked on the CPU: cuda_launch_plan runs the planner the CUDA
ops run (csrc/cuda/launch_plan.h) and reports what the filled kernel parameter blocks
hold, so these tests need no GPU: fusedopt._C when it was built with nvcc, else
fusedopt._cuda_host, the same planner compiled as host C++ (editable and in-place builds).
"""
import importlib
import math
import random

import pytest


def _planner_module():
    for name in ("fusedopt._C", "fusedopt._cuda_host"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "cuda_launch_plan"):
            return module
    pytest.skip("neither fusedopt._C (built without nvcc) nor fusedopt._cuda_host (not built) has the CUDA "
                "launch planner", allow_module_level=True)


_C = _planner_module()

CLASSIC_LIMIT, LARGE_LIMIT = 4096, 32764
# Addresses per tensor: Adam (param, grad, step, exp_avg, exp_avg_sq), Adam with amsgrad,
# SGD without momentum (param, grad), RMSprop centered with momentum.
ADAM, ADAM_AMSGRAD, SGD, RMSPROP_ALL = 5, 6, 2, 5
ELEMENT_BYTES = {"float16": 2, "float32": 4, "float64": 8}


# Bindings that predate the detailed plan report launch counts only.
detailed = pytest.mark.skipif("tensor_index" not in _C.cuda_launch_plan([1], 1, 4),
                              reason="this fusedopt._C.cuda_launch_plan reports launch counts only")


def plan(numels, tensor_lists=ADAM, element_bytes=4, large=None):
    if large is None:
        return _C.cuda_launch_plan(numels, tensor_lists, element_bytes)
    return _C.cuda_launch_plan(numels, tensor_lists, element_bytes, large_parameter_block=large)


def chunks_of(numel, chunk):
    return -(-numel // chunk)


def check_covers_every_chunk_once(numels, result):
    """Replays the kernel's block -> (tensor, chunk) mapping from the plan's parameter blocks."""
    chunk = result["chunk_elements"]
    seen = {}  # tensor index -> chunks covered, in order
    position = 0
    for launch in range(result["launches"]):
        count = result["tensors_per_launch"][launch]
        indices = result["tensor_index"][position:position + count]
        firsts = result["first_chunk"][position:position + count]
        position += count
        assert count > 0, "a launch carries no tensor"
        assert firsts[0] == 0
        # Tensor k of the launch owns blocks [firsts[k], firsts[k+1]): consecutive, non-empty,
        # and exactly as many as the tensor has chunks.
        ends = firsts[1:] + [result["chunks_per_launch"][launch]]
        for index, first, end in zip(indices, firsts, ends):
            assert index not in seen, f"tensor {index} appears in two launches"
            assert end - first == chunks_of(numels[index], chunk), f"tensor {index} has the wrong block count"
            seen[index] = end - first
    assert position == len(result["tensor_index"]) == len(result["first_chunk"])
    assert sorted(seen) == [i for i, n in enumerate(numels) if n > 0], "a non-empty tensor is missing"
    assert sum(result["chunks_per_launch"]) == sum(chunks_of(n, chunk) for n in numels)


def check_fits_parameter_block(result, tensor_lists):
    limit = result["parameter_block_limit"]
    assert limit in (CLASSIC_LIMIT, LARGE_LIMIT)
    for tensors, used in zip(result["tensors_per_launch"], result["parameter_bytes_per_launch"]):
        # Header (counts and the chunk length: 24 bytes), one record per tensor (element
        # count + addresses, 8 bytes each), the tensors' first blocks (4 bytes each, plus
        # the end), and the op's share.
        assert used == 24 + tensors * (8 * (1 + tensor_lists) + 4) + 4 + 256
        assert used <= limit
    for chunks in result["chunks_per_launch"]:
        assert 0 < chunks <= 2**31 - 1  # gridDim.x


SHAPES = {
    "single": [5],
    "odd_sizes": [1, 3, 4097, 70001, 8191, 8192, 8193, 65536 * 3 + 17],
    "with_empty": [0, 7, 0, 0, 100000, 0],
    "many_small": [random.Random(0).randint(1, 5000) for _ in range(1500)],
    "many_mixed": [random.Random(1).choice([0, 1, 31, 4096, 12345, 1 << 20]) for _ in range(2500)],
}


@detailed
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("tensor_lists", [1, SGD, ADAM, ADAM_AMSGRAD, 8, 12], ids=lambda n: f"lists{n}")
@pytest.mark.parametrize("dtype", ELEMENT_BYTES, ids=list(ELEMENT_BYTES))
@pytest.mark.parametrize("large", [True, False], ids=["large_block", "classic_block"])
def test_every_chunk_is_covered_once_within_limits(shape, tensor_lists, dtype, large):
    numels = SHAPES[shape]
    result = plan(numels, tensor_lists, ELEMENT_BYTES[dtype], large)
    assert result["chunk_elements"] * ELEMENT_BYTES[dtype] == 32 * 1024
    check_covers_every_chunk_once(numels, result)
    check_fits_parameter_block(result, tensor_lists)
    if not large:
        assert result["parameter_block_limit"] == CLASSIC_LIMIT


def test_launch_counts_add_up_with_any_bindings():
    numels = [3, 0, 9000, 1, 0, 123457]
    result = plan(numels)
    assert result["launches"] == len(result["tensors_per_launch"]) == len(result["chunks_per_launch"]) == 1
    assert result["tensors_per_launch"] == [4]  # the empty tensors are not carried


@pytest.mark.parametrize("tensor_lists", [SGD, ADAM, ADAM_AMSGRAD])
def test_a_thousand_tensors_take_few_launches(tensor_lists):
    numels = [random.Random(2).randint(1, 100000) for _ in range(1000)]
    result = plan(numels, tensor_lists, 4)
    assert sum(result["tensors_per_launch"]) == 1000
    if result.get("parameter_block_limit", LARGE_LIMIT) == LARGE_LIMIT:
        # 32 KB blocks: Adam carries 624 tensors per launch (541 with amsgrad), SGD 1,160.
        # ATen's 4 KB layout would take 28 launches or more for Adam.
        assert result["launches"] <= 2
    else:
        assert result["launches"] <= math.ceil(1000 / 60)


@detailed
def test_small_tables_use_the_classic_block():
    """A table that fits one 4 KB launch does not pay for copying a 32 KB one."""
    result = plan([100] * 50, ADAM, 4)
    assert result["launches"] == 1
    assert result["parameter_block_limit"] == CLASSIC_LIMIT


@detailed
def test_launches_are_full_before_a_new_one_opens():
    numels = [10] * 5000
    result = plan(numels, ADAM, 4)
    capacity = result["tensors_per_launch"][0]
    assert all(t == capacity for t in result["tensors_per_launch"][:-1])
    assert result["launches"] == math.ceil(5000 / capacity)
    # One more tensor would not fit the parameter block.
    assert result["parameter_bytes_per_launch"][0] + 8 * (1 + ADAM) + 4 > result["parameter_block_limit"]


def test_only_empty_tensors_need_no_launch():
    for numels in ([], [0], [0] * 3000):
        result = plan(numels)
        assert result["launches"] == 0
        assert result["tensors_per_launch"] == [] and result["chunks_per_launch"] == []


@detailed
@pytest.mark.parametrize("dtype", ELEMENT_BYTES, ids=list(ELEMENT_BYTES))
def test_tensors_beyond_two_to_the_31_elements(dtype):
    big = 2**31 + 3
    numels = [5, big, 17, 2**33 + 1]
    result = plan(numels, ADAM, ELEMENT_BYTES[dtype])
    check_covers_every_chunk_once(numels, result)
    chunk = result["chunk_elements"]
    # The last block of the big tensor starts past 2^31 elements: 64-bit element offsets.
    assert (chunks_of(big, chunk) - 1) * chunk >= 2**31
    position = result["tensor_index"].index(1)
    assert result["first_chunk"][position + 1] - result["first_chunk"][position] == chunks_of(big, chunk)


def test_invalid_arguments_raise_value_error():
    with pytest.raises(ValueError):
        plan([10], ADAM, 3)
    with pytest.raises(ValueError):
        plan([10], 0, 4)
    with pytest.raises(ValueError):
        plan([10], 13, 4)  # kMaxAddresses is 12 (an 8-bit Adam's record with amsgrad holds 11)
    with pytest.raises(ValueError):
        plan([-1], ADAM, 4)


# --------------------------------------------------------------------------- adversarial tables
MAX_CHUNKS_PER_LAUNCH = 2**31 - 1  # gridDim.x


def capacity(limit, tensor_lists):
    """Tensors one parameter block holds (csrc/cuda/launch_plan.h): 32-bit cells after a
    24-byte header, the op's 256 bytes kept aside; per tensor a record of 2 * (1 + lists)
    cells and a first-chunk cell, plus the closing first-chunk cell."""
    cells = ((limit - 256) // 8 * 8 - 24) // 4
    return (cells - 1) // (2 * (1 + tensor_lists) + 1)


def check_launches_are_full(numels, result, tensor_lists):
    """Tensors go in table order, and a launch closes only when the next tensor's record or
    chunks would not fit it."""
    chunk = result["chunk_elements"]
    carried = [i for i, n in enumerate(numels) if n > 0]
    assert result["tensor_index"] == carried, "tensors out of table order"
    room = capacity(result["parameter_block_limit"], tensor_lists)
    position = 0
    for launch in range(result["launches"] - 1):
        position += result["tensors_per_launch"][launch]
        next_chunks = chunks_of(numels[result["tensor_index"][position]], chunk)
        full = result["tensors_per_launch"][launch] == room
        assert full or result["chunks_per_launch"][launch] + next_chunks > MAX_CHUNKS_PER_LAUNCH, (
            f"launch {launch} closed with {result['tensors_per_launch'][launch]} of {room} tensors")


def adversarial_table(seed, chunk):
    """Thousands of tensors: empty, one element, around one and two chunks, odd sizes, and
    some past 2^31 and 2^33 elements."""
    rng = random.Random(seed)
    choices = [0, 1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk - 1, 2 * chunk + 1, 3, 4097]
    numels = []
    for _ in range(rng.randint(1000, 6000)):
        roll = rng.random()
        if roll < 0.8:
            numels.append(rng.choice(choices))
        elif roll < 0.99:
            numels.append(rng.randint(0, 10 * chunk))
        else:
            numels.append(rng.choice([2**31 - 1, 2**31, 2**31 + 1, 2**33 + 7]))
    return numels


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("large", [True, False], ids=["large_block", "classic_block"])
def test_adversarial_tables(seed, large):
    rng = random.Random(1000 + seed)
    tensor_lists = rng.randint(1, 8)
    element_bytes = rng.choice(list(ELEMENT_BYTES.values()))
    chunk = plan([1], 1, element_bytes)["chunk_elements"]
    numels = adversarial_table(seed, chunk)
    result = plan(numels, tensor_lists, element_bytes, large)
    check_covers_every_chunk_once(numels, result)
    check_fits_parameter_block(result, tensor_lists)
    check_launches_are_full(numels, result, tensor_lists)


@pytest.mark.parametrize("large", [True, False], ids=["large_block", "classic_block"])
def test_grids_past_two_to_the_31_blocks_split(large):
    """A launch has at most 2^31 - 1 blocks (gridDim.x): tensors whose chunks add up past
    that go to separate launches, with first-chunk offsets up to the limit."""
    chunk = plan([1], 1, 2)["chunk_elements"]
    # chunks: 2^31 - 3 and 2 fill a grid exactly; 2, 1 and 2^30 the next; 2^30 more would overflow it
    numels = [(2**31 - 3) * chunk, 2 * chunk, chunk + 1, 5, 2**30 * chunk, 2**30 * chunk - 1]
    result = plan(numels, SGD, 2, large)
    check_covers_every_chunk_once(numels, result)
    check_fits_parameter_block(result, SGD)
    check_launches_are_full(numels, result, SGD)
    assert result["tensors_per_launch"] == [2, 3, 1]
    assert result["chunks_per_launch"] == [2**31 - 1, 2**30 + 3, 2**30]
    assert result["first_chunk"][1] == 2**31 - 3


def test_a_tensor_needing_more_blocks_than_a_grid_holds_is_refused():
    chunk = plan([1], 1, 4)["chunk_elements"]
    plan([MAX_CHUNKS_PER_LAUNCH * chunk], SGD, 4)  # exactly the limit: one launch
    with pytest.raises(ValueError, match="more thread blocks than one launch"):
        plan([MAX_CHUNKS_PER_LAUNCH * chunk + 1], SGD, 4)
