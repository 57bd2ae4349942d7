"""`python -m fusedopt.bench.int8_states`: the speed bar of 8-bit optimizer states, on the CPU.

    python -m fusedopt.bench.int8_states [--numel 20000000] [--tensors 200] [--steps 20]
                                         [--warmup 3] [--threads N] [--backend cpu]

Bar (issue 13): fusedopt.Adam with state_dtype="int8" takes at most 0.9 x the time of
fusedopt.Adam with float32 states, on one tensor of `numel` elements and on `tensors`
tensors totalling `numel`. Both run in this process, call by call in turn
(measure.round_robin), on the same params and grads; the figure is the ratio of median step
times. bitsandbytes' Adam8bit and torchao's AdamW8bit are timed beside them when they import
and run on CPU tensors; the report says why where they do not.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fusedopt

from .measure import CpuClock, round_robin

LIMIT = 0.9


def _params(sizes: Sequence[int]) -> List[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for size in sizes:
        p = torch.nn.Parameter(torch.randn(size, generator=generator))
        p.grad = torch.randn(size, generator=generator) * 1e-2
        params.append(p)
    return params


def _other_8bit_adams() -> Tuple[Dict[str, Callable], List[str]]:
    """The 8-bit Adams of other libraries that run on CPU tensors here, and why the others do not."""
    found: Dict[str, Callable] = {}
    missing: List[str] = []
    for name, module, attribute in (("bitsandbytes.optim.Adam8bit", "bitsandbytes.optim", "Adam8bit"),
                                    ("torchao AdamW8bit", "torchao.optim", "AdamW8bit")):
        try:
            cls = getattr(__import__(module, fromlist=[attribute]), attribute)
            probe = [torch.nn.Parameter(torch.zeros(4096))]
            probe[0].grad = torch.ones(4096)
            cls(probe).step()
        except Exception as error:  # not installed, or no CPU kernels: say which
            missing.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
            continue
        found[name] = cls
    return found, missing


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench.int8_states", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--numel", type=int, default=20_000_000, help="elements in each workload")
    parser.add_argument("--tensors", type=int, default=200, help="tensors of the second workload (1: only one)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--backend", default="cpu", help="fusedopt's backend")
    options = parser.parse_args(list(argv))
    if options.threads:
        torch.set_num_threads(options.threads)
    others, missing = _other_8bit_adams()
    contenders: Dict[str, Callable] = {
        "fusedopt.Adam, fp32 states": lambda ps: fusedopt.Adam(ps, lr=1e-3, backend=options.backend),
        "fusedopt.Adam, int8 states": lambda ps: fusedopt.Adam(ps, lr=1e-3, state_dtype="int8",
                                                               backend=options.backend),
        **{name: (lambda ps, cls=cls: cls(ps, lr=1e-3)) for name, cls in others.items()},
    }
    print(f"Adam step, float32 params, backend {options.backend!r}, {torch.get_num_threads()} threads, "
          f"median of {options.steps} steps after {options.warmup} (contenders in turn)")
    for line in missing:
        print(f"  not timed: {line}")
    failed = False
    per_tensor = options.numel // options.tensors
    for label, sizes in ((f"1 x {options.numel:,}", [options.numel]),
                         (f"{options.tensors} x {per_tensor:,}", [per_tensor] * options.tensors)):
        optimizers = {name: make(_params(sizes)) for name, make in contenders.items()}
        samples = round_robin([opt.step for opt in optimizers.values()], options.warmup, options.steps, CpuClock())
        medians = {name: statistics.median(s) for name, s in zip(optimizers, samples)}
        baseline = medians["fusedopt.Adam, fp32 states"]
        for name, ms in medians.items():
            print(f"  {label:>16}: {name:<32} {ms:9.2f} ms/step  {ms / baseline:6.3f} x fp32 states")
        ratio = medians["fusedopt.Adam, int8 states"] / baseline
        passed = ratio <= LIMIT
        failed |= not passed
        print(f"  bar ({label}): int8 / fp32 = {ratio:.3f} (limit {LIMIT}: {'PASS' if passed else 'FAIL'})")
        del optimizers
    return 1 if failed else 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
