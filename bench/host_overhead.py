"""Host cost of one optimizer step on many tiny params, as a training loop sees it.

The `bars` host-overhead rows keep the same grad tensors from step to step (what
`zero_grad(set_to_none=False)` gives). A loop with torch's default `zero_grad()` gets new
grad tensors every step, which fusedopt must check again before any kernel reads them.
This script times both, side by side in one process: fusedopt and torch.optim's fused
(where torch has it) and foreach implementations take turns step by step, each with its
own params; grads are assigned outside the timed call. Ratios of medians, and of means:
a step that sets off one of Python's full garbage collections takes tens of milliseconds,
which a median hides and a training run pays (one optimizer's garbage can set one off in
another's step: run the optimizers in separate processes to see whose it is).

    python bench/host_overhead.py [--count 1000] [--numel 8] [--steps 200] [--optimizers adam,sgd]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without `pip install -e .`
import fusedopt  # noqa: E402

CASES = {  # name: (fusedopt class, torch class, keyword arguments)
    "adam": (fusedopt.Adam, torch.optim.Adam, {}),
    "adamw": (fusedopt.AdamW, torch.optim.AdamW, {"weight_decay": 0.01}),
    "adagrad": (fusedopt.Adagrad, torch.optim.Adagrad, {}),
    "sgd": (fusedopt.SGD, torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9}),
}
TORCH_VARIANTS = ("fused", "foreach")


def contenders(case: str, count: int, numel: int):
    ours, theirs, kwargs = CASES[case]
    made = [("fusedopt", ours, {})] + [(f"torch[{v}]", theirs, {v: True}) for v in TORCH_VARIANTS]
    for label, cls, flag in made:
        params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(count)]
        yield label, params, cls(params, **kwargs, **flag)


def time_case(case: str, count: int, numel: int, steps: int, warmup: int, new_grads: bool):
    pools = [[torch.randn(numel) for _ in range(count)] for _ in range(2)]
    runs = list(contenders(case, count, numel))
    samples = {label: [] for label, _, _ in runs}
    for step in range(warmup + steps):
        for offset in range(len(runs)):
            label, params, opt = runs[(step + offset) % len(runs)]
            if new_grads or step == 0:
                for p, g in zip(params, pools[step % 2]):
                    p.grad = g.clone() if new_grads else g
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if step >= warmup:
                samples[label].append(elapsed * 1e3)
    return ({label: statistics.median(times) for label, times in samples.items()},
            {label: statistics.fmean(times) for label, times in samples.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--numel", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--optimizers", default=",".join(CASES))
    options = parser.parse_args(argv)
    print(f"host cost per step, {options.count} params of {options.numel} elements, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {options.steps} steps (ms: median / mean); "
          f"ratio: fusedopt / torch's fastest, of medians / of means")
    print(f"{'optimizer':10} {'grads':22} {'fusedopt':>15} {'torch[fused]':>15} {'torch[foreach]':>15} {'ratio':>13}")
    for case in options.optimizers.split(","):
        for new_grads in (False, True):
            medians, means = time_case(case, options.count, options.numel, options.steps, options.warmup, new_grads)
            ratios = [ms["fusedopt"] / min(ms[f"torch[{v}]"] for v in TORCH_VARIANTS) for ms in (medians, means)]
            grads = "new every step" if new_grads else "same tensors each step"
            cells = [f"{medians[label]:.3f} / {means[label]:.3f}"
                     for label in ("fusedopt", *(f"torch[{v}]" for v in TORCH_VARIANTS))]
            print(f"{case:10} {grads:22} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
                  f"{ratios[0]:>6.3f} / {ratios[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
