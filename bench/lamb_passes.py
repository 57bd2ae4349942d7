"""Where LAMB's step time goes on the CPU: its norm pass and its update pass, each timed
inside the step, beside fusedopt Adam's whole step (the issue-12 bar holds LAMB to 1.3 x
Adam). The norm pass reads p, g, m and v and writes nothing; Adam's step reads the same four
and writes three of them back. When the norm pass costs about what Adam's step does, the
machine is bound by reads, or the pass by its float64 sums.
LAMB runs twice: as the CPU backend runs it (one native call that takes both passes a group of
tensors at a time, so the update reads from cache what the norm pass has just read:
csrc/cpu/norm_then_update.h) and as two passes over the whole bucket (Backend's default,
the passes timed). The same bits either way. Steps alternate between the contenders; medians.

    python bench/lamb_passes.py [--numel 20000000] [--tensors 1] [--steps 20] [--threads N]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without `pip install -e .`
import fusedopt  # noqa: E402
from fusedopt.backends.base import Backend  # noqa: E402
from fusedopt.backends.native import CPUBackend  # noqa: E402


def _params(numel: int, tensors: int):
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(numel // tensors, generator=generator).requires_grad_() for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    passes = {"norms": [], "update": []}
    recording = [False]  # set during the two-pass LAMB's timed steps only
    for name in passes:  # time the backend's two native calls inside that LAMB's step
        original = getattr(CPUBackend, name)

        def timed(self, *a, _original=original, _name=name, **k):
            start = time.perf_counter()
            result = _original(self, *a, **k)
            if recording[0]:
                passes[_name].append(time.perf_counter() - start)
            return result
        setattr(CPUBackend, name, timed)
    one_call = CPUBackend.update_with_norm_pass
    two_passes = [False]

    def update_with_norm_pass(self, *a, **k):
        return (Backend.update_with_norm_pass if two_passes[0] else one_call)(self, *a, **k)
    CPUBackend.update_with_norm_pass = update_with_norm_pass
    contenders = (("Adam", fusedopt.Adam(_params(args.numel, args.tensors), backend="cpu")),
                  ("LAMB", fusedopt.LAMB(_params(args.numel, args.tensors), backend="cpu")),
                  ("LAMB, two passes", fusedopt.LAMB(_params(args.numel, args.tensors), backend="cpu")))
    steps = {name: [] for name, _ in contenders}
    for step in range(args.steps + 3):  # 3 warm-up steps
        for name, optimizer in contenders:
            two_passes[0] = name == "LAMB, two passes"
            recording[0] = two_passes[0] and step >= 3
            start = time.perf_counter()
            optimizer.step()
            if step >= 3:
                steps[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(times) for name, times in {**steps, **passes}.items()}
    print(f"{args.tensors} tensor(s), {args.numel:,} elements, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, fusedopt {fusedopt.__version__}; medians of {args.steps} steps")
    print(f"Adam step {ms['Adam']:.2f} ms; LAMB step {ms['LAMB']:.2f} ms ({ms['LAMB'] / ms['Adam']:.2f} x Adam); "
          f"LAMB in two whole passes {ms['LAMB, two passes']:.2f} ms ({ms['LAMB, two passes'] / ms['Adam']:.2f} x "
          f"Adam): norm pass {ms['norms']:.2f} ms ({ms['norms'] / ms['Adam']:.2f} x Adam's step), "
          f"update pass {ms['update']:.2f} ms")


if __name__ == "__main__":
    main()
