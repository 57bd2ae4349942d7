"""Adafactor's bar: fusedopt.Adafactor against torch.optim.Adafactor(foreach=True) on the
parameter shapes of GPT-2 small, side by side in one process (CPU unless --device cuda).

    python -m fusedopt.bench.adafactor [--scale full|quick] [--repeats 5] [--backend cpu]

The bar (issue 12): fusedopt at least 3x faster than torch's foreach Adafactor, i.e.
time(fusedopt) / time(torch foreach) <= 0.333. Each contender runs warm-up steps, then the
median of `--repeats` timed steps is reported. Traffic per element of fusedopt's CPU step
(float32, a factored param): pass A reads p and g (8 bytes), pass B reads g (4), pass C
reads g and p and writes p (12): 24 bytes; a vector's variance adds 12 more.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import fusedopt
from fusedopt.bench.workloads import _GPT2_SMALL, gpt2_parameter_shapes, params_with_grads

BAR = 1 / 3


def _time(step: Callable[[], None], device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench.adafactor",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=("full", "quick"), default="full",
                        help="GPT-2 small's shapes (full) or 12 layers at width 128 (quick)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per contender (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backend", default="auto", help="fusedopt's backend")
    args = parser.parse_args(argv)
    shapes = gpt2_parameter_shapes(_GPT2_SMALL[args.scale])
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"Adafactor on GPT-2 small ({args.scale}): {len(shapes)} tensors, {numel:,} elements, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    ours = params_with_grads(shapes, args.device)
    fused = fusedopt.Adafactor(ours, backend=args.backend)
    fused_time = _time(fused.step, args.device, args.warmup, args.repeats)
    del ours, fused
    theirs = params_with_grads(shapes, args.device)
    reference = torch.optim.Adafactor(theirs, foreach=True)
    torch_time = _time(reference.step, args.device, args.warmup, args.repeats)
    ratio = fused_time / torch_time
    print(f"  fusedopt[{fusedopt.backends.resolve(args.backend, torch.device(args.device), 'factored').name}] "
          f"{fused_time * 1e3:9.2f} ms/step")
    print(f"  torch[foreach]      {torch_time * 1e3:9.2f} ms/step")
    print(f"  ratio fusedopt/torch = {ratio:.3f} (bar <= {BAR:.3f}: {'PASS' if ratio <= BAR else 'FAIL'}); "
          f"speed-up {1 / ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
