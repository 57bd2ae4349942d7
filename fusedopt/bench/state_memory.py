"""Optimizer-state bytes per parameter of Adam on GPT-2 small's parameter shapes.

    python -m fusedopt.bench.state_memory [--scale full|quick|tiny] [--backend cpu]

Counts what a checkpoint holds: every tensor of `optimizer.state_dict()["state"]` (moments,
step counters, master copies), in bytes, divided by the number of parameters. One step with
random grads creates the state. Issue 13's bars: <= 4.1 bytes/param with bf16 states,
<= 2.1 with 8-bit states (state_dtype="int8": codes, one byte per element, and a float32
absmax per block of 256; tensors under 4,096 elements keep float32 states). The 8-bit
configuration runs on a backend with 8-bit kernels (the reference where --backend has none).
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch

import fusedopt
from fusedopt.bench.workloads import _GPT2_SMALL, gpt2_parameter_shapes, params_with_grads

BF16_BAR = 4.1
INT8_BAR = 2.1


def _int8_backend(backend: str) -> str:
    """`backend` if it has 8-bit state kernels, else the reference (the specification)."""
    return backend if "int8_states" in fusedopt.backends.get(backend).kernels else "reference"


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    """Bytes of every tensor in the state_dict's state, per parameter of the optimizer."""
    params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    state = optimizer.state_dict()["state"]
    total = sum(t.numel() * t.element_size() for entry in state.values() for t in entry.values()
                if isinstance(t, torch.Tensor))
    return total / params


def configurations(backend: str) -> Dict[str, Callable]:
    """name -> (param dtype, optimizer factory)."""
    return {
        "torch.optim.AdamW, fp32 params": (torch.float32, lambda ps: torch.optim.AdamW(ps, foreach=True)),
        "fusedopt.AdamW, fp32 params, fp32 states": (torch.float32, lambda ps: fusedopt.AdamW(ps, backend=backend)),
        "fusedopt.AdamW, fp32 params, bf16 states": (
            torch.float32, lambda ps: fusedopt.AdamW(ps, state_dtype=torch.bfloat16, backend=backend)),
        "fusedopt.AdamW, bf16 params, bf16 states": (
            torch.bfloat16, lambda ps: fusedopt.AdamW(ps, state_dtype=torch.bfloat16, backend=backend)),
        "fusedopt.AdamW, bf16 params + fp32 master, bf16 states": (
            torch.bfloat16,
            lambda ps: fusedopt.AdamW(ps, master_weights=True, state_dtype=torch.bfloat16, backend=backend)),
        "fusedopt.AdamW, fp32 params, int8 states": (
            torch.float32, lambda ps: fusedopt.AdamW(ps, state_dtype="int8", backend=_int8_backend(backend))),
    }


def measure(scale: str, backend: str) -> Dict[str, float]:
    shapes = gpt2_parameter_shapes(_GPT2_SMALL[scale])
    results = {}
    for name, (dtype, make) in configurations(backend).items():
        params = params_with_grads(shapes, dtype=dtype)
        optimizer = make(params)
        optimizer.step()
        results[name] = state_bytes_per_param(optimizer)
        del optimizer, params
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.bench.state_memory",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=tuple(_GPT2_SMALL), default="full",
                        help="GPT-2 small's shapes (full) or a smaller model of the same structure")
    parser.add_argument("--backend", default="cpu", help="fusedopt's backend for the step that creates the state")
    args = parser.parse_args(argv)
    shapes = gpt2_parameter_shapes(_GPT2_SMALL[args.scale])
    numel = sum(torch.Size(s).numel() for s in shapes)
    print(f"Optimizer-state bytes per parameter, GPT-2 small ({args.scale}): {len(shapes)} tensors, "
          f"{numel:,} parameters, backend {args.backend}, torch {torch.__version__}, fusedopt {fusedopt.__version__}")
    for name, per_param in measure(args.scale, args.backend).items():
        verdict = ""
        if "bf16 states" in name and "master" not in name:
            verdict = f"  (bar <= {BF16_BAR}: {'PASS' if per_param <= BF16_BAR else 'FAIL'})"
        if "int8 states" in name:
            verdict = f"  (bar <= {INT8_BAR}: {'PASS' if per_param <= INT8_BAR else 'FAIL'})"
        print(f"  {name:56s} {per_param:7.4f} bytes/param{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
