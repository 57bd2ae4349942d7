"""Host cost of the optimizer step inside a training loop, garbage collection included.

A model of 500 Linear(4, 4) layers (1,000 small params) trains with forward, backward,
step and `zero_grad()` (set_to_none, torch's default), so every step brings 1,000 new
grads. Each optimizer runs in a process of its own: Python's garbage collector runs a full
collection (tens of milliseconds with torch imported) when enough objects have survived
into its oldest generation, and a step that keeps new objects alive from one step to the
next sets those off, whoever's step they land in. Reported per optimizer: the median and
the mean step time (the mean is what a training run pays), and the full collections that
ran inside steps. Ratios: fusedopt / torch.optim's fused implementation.

    python bench/training_loop_host.py [--steps 200] [--optimizers adam,sgd,adagrad]
"""
import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"adam": ("Adam", {}), "adamw": ("AdamW", {"weight_decay": 0.01}), "adagrad": ("Adagrad", {}),
         "sgd": ("SGD", {"momentum": 0.9})}


def run_one(library: str, case: str, steps: int, warmup: int) -> dict:
    """Times one optimizer's steps in this process; returns the measurements."""
    sys.path.insert(0, str(ROOT))  # a source checkout without `pip install -e .`
    import torch

    import fusedopt

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(500)])
    inputs = torch.randn(8, 4)
    name, kwargs = CASES[case]
    if library == "fusedopt":
        optimizer = getattr(fusedopt, name)(model.parameters(), lr=1e-4, **kwargs)
    else:
        optimizer = getattr(torch.optim, name)(model.parameters(), lr=1e-4, fused=True, **kwargs)
    in_step, started, full = [False], [0.0], []

    def on_collection(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        elif in_step[0] and info["generation"] == 2:
            full.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_collection)
    times = []
    for index in range(warmup + steps):
        model(inputs).square().mean().backward()
        in_step[0] = index >= warmup
        start = time.perf_counter()
        optimizer.step()
        elapsed = time.perf_counter() - start
        in_step[0] = False
        optimizer.zero_grad()
        if index >= warmup:
            times.append(elapsed * 1e3)
    return {"median": statistics.median(times), "mean": statistics.fmean(times), "full": len(full),
            "full_ms": sum(full) * 1e3, "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--optimizers", default="adam,sgd,adagrad")
    parser.add_argument("--one", nargs=2, metavar=("LIBRARY", "CASE"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.one:
        print(json.dumps(run_one(*options.one, options.steps, options.warmup)))
        return 0
    header = None
    for case in options.optimizers.split(","):
        results = {}
        for library in ("fusedopt", "torch[fused]"):
            command = [sys.executable, __file__, "--steps", str(options.steps), "--warmup", str(options.warmup),
                       "--one", library, case]
            results[library] = json.loads(subprocess.run(command, check=True, capture_output=True,
                                                          text=True).stdout.splitlines()[-1])
        if header is None:
            header = (f"optimizer step in a training loop, 1,000 params (500 x Linear(4, 4)), zero_grad() each step, "
                      f"torch {results['fusedopt']['torch']}, {options.steps} steps, one process per optimizer")
            print(header)
            print(f"{'optimizer':10} {'library':13} {'median ms':>10} {'mean ms':>8} {'full GCs in steps':>18}")
        for library, r in results.items():
            print(f"{case:10} {library:13} {r['median']:10.3f} {r['mean']:8.3f} "
                  f"{r['full']:>6} ({r['full_ms']:.0f} ms)")
        ours, theirs = results["fusedopt"], results["torch[fused]"]
        print(f"{case:10} {'ratio':13} {ours['median'] / theirs['median']:10.3f} {ours['mean'] / theirs['mean']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
