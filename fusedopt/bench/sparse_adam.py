"""`python -m fusedopt.bench.sparse_adam`: the lazy (sparse-row) Adam bar, on the CPU.

    python -m fusedopt.bench.sparse_adam [--rows 1000000] [--small-rows 100000] [--dim 128]
                                         [--touched 4096] [--steps 30] [--warmup 5] [--threads N]

Bar (issue 12): fusedopt.SparseAdam on a rows x dim embedding with `touched` rows in each
grad is at least 3x faster than torch.optim.SparseAdam, and its cost follows the rows
touched, not the table: the same grads on a table 10x smaller cost about the same. Each
step hands both optimizers the same uncoalesced grad (an nn.Embedding(sparse=True) grad:
`touched` distinct rows, each index twice), so the times include coalescing, as a
training step's would. Median step times; the grads are built before timing.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch

import fusedopt

LIMIT = 1 / 3


def _grads(rows: int, dim: int, touched: int, steps: int) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(steps):
        index = torch.randperm(rows, generator=generator)[:touched].repeat(2)  # each row twice: uncoalesced
        values = torch.randn(2 * touched, dim, generator=generator)
        grads.append(torch.sparse_coo_tensor(index[None], values, (rows, dim)))
    return grads


def _median_step(make: Callable, rows: int, dim: int, grads: Sequence[torch.Tensor], warmup: int) -> float:
    param = torch.nn.Parameter(torch.zeros(rows, dim))
    optimizer = make([param])
    times = []
    for i, grad in enumerate(grads):
        param.grad = grad
        start = time.perf_counter()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench.sparse_adam", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the embedding table")
    parser.add_argument("--small-rows", type=int, default=100_000, help="rows of the smaller table, same grads")
    parser.add_argument("--dim", type=int, default=128, help="elements per row")
    parser.add_argument("--touched", type=int, default=4096, help="distinct rows in each step's grad")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    options = parser.parse_args(list(argv))
    if options.threads:
        torch.set_num_threads(options.threads)
    contenders: Dict[str, Callable] = {
        "torch.optim.SparseAdam": lambda ps: torch.optim.SparseAdam(ps),
        "fusedopt.SparseAdam[cpu]": lambda ps: fusedopt.SparseAdam(ps, backend="cpu"),
        "fusedopt.SparseAdam[reference]": lambda ps: fusedopt.SparseAdam(ps, backend="reference"),
    }
    steps = options.steps + options.warmup
    print(f"lazy Adam, {options.dim} columns, {options.touched} rows touched per step (each index twice), "
          f"{torch.get_num_threads()} threads, median of {options.steps} steps")
    times: Dict[tuple, float] = {}
    for rows in (options.rows, options.small_rows):
        grads = _grads(rows, options.dim, options.touched, steps)
        for name, make in contenders.items():
            times[(rows, name)] = _median_step(make, rows, options.dim, grads, options.warmup)
            print(f"  table {rows:>9,} x {options.dim}: {name:<32} {times[(rows, name)] * 1e3:8.3f} ms/step")
    ours, theirs = times[(options.rows, "fusedopt.SparseAdam[cpu]")], times[(options.rows, "torch.optim.SparseAdam")]
    ratio = ours / theirs
    small = times[(options.small_rows, "fusedopt.SparseAdam[cpu]")]
    print(f"bar: fusedopt[cpu] / torch = {ratio:.3f} (limit {LIMIT:.3f}: {'PASS' if ratio <= LIMIT else 'FAIL'}); "
          f"{options.rows:,}-row table / {options.small_rows:,}-row table = {ours / small:.2f} "
          "(cost follows the rows touched when close to 1)")
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
