"""How evenly the CPU reduction passes share a table's blocks between threads: the largest
thread's elements over an equal share, for the schedule the passes had (OpenMP
schedule(static) over blocks, an equal count of blocks per thread) and for
csrc/cpu/multi_tensor_cpu.h's for_each_block (each thread the blocks that start in its equal
share of the elements). Arithmetic over the block lists of fusedopt/reduce.h, not a timing.

    python bench/block_balance.py
"""
import argparse
import math

SUM_BLOCK = 65536  # fusedopt/reduce.h's kSumBlock


def gpt2_small_shapes():
    sizes = [50257 * 768, 1024 * 768]  # token and position embeddings
    for _ in range(12):
        sizes += [768, 768, 768 * 2304, 2304, 768 * 768, 768, 768, 768, 768 * 3072, 3072, 3072 * 768, 768]
    return sizes + [768, 768]


def blocks(sizes):
    return [min(SUM_BLOCK, n - k * SUM_BLOCK) for n in sizes for k in range(math.ceil(n / SUM_BLOCK))]


def static_schedule(block_sizes, threads):
    """libgomp's schedule(static) without a chunk: contiguous runs, the first count % threads
    threads one block more."""
    count, loads, first = len(block_sizes), [], 0
    for t in range(threads):
        run = count // threads + (1 if t < count % threads else 0)
        loads.append(sum(block_sizes[first:first + run]))
        first += run
    return loads


def by_elements(block_sizes, threads):
    total, start, loads = sum(block_sizes), 0, [0] * threads
    boundaries = [total // threads * k + total % threads * k // threads for k in range(threads)]
    for size in block_sizes:
        loads[max(k for k in range(threads) if start >= boundaries[k])] += size
        start += size
    return loads


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ")).parse_args()  # --help only
    tables = {
        "GPT-2 small (all params)": gpt2_small_shapes(),
        "3 x 200,000 + 300 x 768 (a few matrices, many norms and biases)": [200_000] * 3 + [768] * 300,
        "LAMB group: 150,000 + 40 x 3,000": [150_000] + [3_000] * 40,
    }
    for name, sizes in tables.items():
        block_sizes = blocks(sizes)
        for threads in (2, 4, 8):
            ideal = sum(block_sizes) / threads
            print(f"{name}, {threads} threads: largest share {max(static_schedule(block_sizes, threads)) / ideal:.3f}"
                  f" x equal with schedule(static), {max(by_elements(block_sizes, threads)) / ideal:.3f} x by elements")


if __name__ == "__main__":
    main()
