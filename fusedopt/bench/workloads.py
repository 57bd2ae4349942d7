"""The parameter lists the optimizers update ("shapes" of work).

Sizes depend on the device and on the scale: "full" (the real sizes),
"quick" (a run under a minute on a small CPU) and "tiny" (tests only).
"""
import math
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

SCALES = ("full", "quick", "tiny")
SHAPE_NAMES = ("large", "gpt2-small", "gpt2-xl", "many-small", "many-4096", "host-overhead")

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_embd: int
    vocab_size: int
    n_ctx: int


GPT2_SMALL = GPTConfig(n_layer=12, n_embd=768, vocab_size=50257, n_ctx=1024)  # 124,439,808 params
GPT2_XL = GPTConfig(n_layer=48, n_embd=1600, vocab_size=50257, n_ctx=1024)  # 1,557,611,200 params


def gpt2_parameter_shapes(config: GPTConfig) -> List[Shape]:
    """Parameter shapes of a GPT-2 model (HF layout, lm_head tied to wte)."""
    d = config.n_embd
    block = [
        (d,), (d,),  # ln_1 weight, bias
        (d, 3 * d), (3 * d,),  # attn.c_attn
        (d, d), (d,),  # attn.c_proj
        (d,), (d,),  # ln_2
        (d, 4 * d), (4 * d,),  # mlp.c_fc
        (4 * d, d), (d,),  # mlp.c_proj
    ]
    return [(config.vocab_size, d), (config.n_ctx, d)] + block * config.n_layer + [(d,), (d,)]


@dataclass(frozen=True)
class Workload:
    name: str
    shapes: Tuple[Shape, ...]
    description: str
    # Optimizer families timed on this workload; None means all of them.
    families: Optional[Tuple[str, ...]] = None

    @property
    def num_tensors(self) -> int:
        return len(self.shapes)

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def make_tensors(self, dtype: torch.dtype, device: torch.device, seed: int) -> List[torch.Tensor]:
        """Deterministic standard-normal tensors of these shapes."""
        generator = torch.Generator(device=device).manual_seed(seed)
        return [
            torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
            for shape in self.shapes
        ]


# Element counts, keyed by (device type, scale). The CUDA sizes are large
# enough that launch overhead does not hide the memory traffic.
_LARGE_NUMEL = {
    ("cpu", "full"): 20_000_000, ("cpu", "quick"): 2_000_000, ("cpu", "tiny"): 4_099,
    ("cuda", "full"): 256 * 2**20, ("cuda", "quick"): 16 * 2**20, ("cuda", "tiny"): 4_099,
}
_MANY_SMALL = {  # (number of tensors, total elements)
    ("cpu", "full"): (200, 20_000_000), ("cpu", "quick"): (200, 2_000_000),
    ("cpu", "tiny"): (20, 2_000),
    ("cuda", "full"): (2_000, 20_000_000), ("cuda", "quick"): (2_000, 2_000_000),
    ("cuda", "tiny"): (20, 2_000),
}
_HOST_OVERHEAD = {"full": (1_000, 8), "quick": (1_000, 8), "tiny": (50, 8)}  # (tensors, elements each)
# Launch and host overhead at scale: 10,000 equal tensors of 4,096 elements (the CUDA bar).
_MANY_4096 = {"full": (10_000, 4_096), "quick": (1_000, 4_096), "tiny": (20, 4_096)}  # (tensors, elements each)
# Scaled-down GPT-2s keep the layer structure and shrink the widths.
_GPT2_SMALL = {
    "full": GPT2_SMALL,
    "quick": GPTConfig(n_layer=12, n_embd=128, vocab_size=8192, n_ctx=256),
    "tiny": GPTConfig(n_layer=2, n_embd=16, vocab_size=64, n_ctx=16),
}
_GPT2_XL = {
    "full": GPT2_XL,
    "quick": GPTConfig(n_layer=48, n_embd=256, vocab_size=8192, n_ctx=256),
    "tiny": GPTConfig(n_layer=4, n_embd=16, vocab_size=64, n_ctx=16),
}


def default_shape_names(device: torch.device) -> List[str]:
    """GPT-2 XL (1.5B parameters) and the 10,000 tensors of many-4096 only run by default on
    a GPU."""
    names = list(SHAPE_NAMES)
    if device.type != "cuda":
        names.remove("gpt2-xl")
        names.remove("many-4096")
    return names


def build_workloads(names: Sequence[str], device: torch.device, scale: str) -> List[Workload]:
    unknown = set(names) - set(SHAPE_NAMES)
    if unknown:
        raise ValueError(f"unknown shape(s) {sorted(unknown)}; choose from {list(SHAPE_NAMES)}")
    device_type = "cuda" if device.type == "cuda" else "cpu"
    builders = {
        "large": lambda: _large(_LARGE_NUMEL[device_type, scale]),
        "gpt2-small": lambda: _gpt2("gpt2-small", _GPT2_SMALL[scale]),
        "gpt2-xl": lambda: _gpt2("gpt2-xl", _GPT2_XL[scale]),
        "many-small": lambda: _many_small(*_MANY_SMALL[device_type, scale]),
        "many-4096": lambda: _equal_tensors("many-4096", *_MANY_4096[scale]),
        "host-overhead": lambda: _host_overhead(*_HOST_OVERHEAD[scale]),
    }
    return [builders[name]() for name in SHAPE_NAMES if name in names]


def _large(numel: int) -> Workload:
    return Workload("large", ((numel,),), f"one tensor of {numel:,} elements")


def _gpt2(name: str, config: GPTConfig) -> Workload:
    shapes = tuple(gpt2_parameter_shapes(config))
    description = (
        f"GPT-2 layer shapes: {config.n_layer} layers, n_embd={config.n_embd},"
        f" vocab={config.vocab_size}; {len(shapes)} tensors,"
        f" {sum(map(math.prod, shapes)):,} elements"
    )
    return Workload(name, shapes, description)


def _many_small(count: int, total: int) -> Workload:
    shapes = tuple((size,) for size in _split_unevenly(total, count, seed=0))
    return Workload("many-small", shapes, f"{count} tensors of uneven sizes, {total:,} elements")


def _equal_tensors(name: str, count: int, numel_each: int) -> Workload:
    return Workload(name, ((numel_each,),) * count, f"{count:,} tensors of {numel_each:,} elements")


def _host_overhead(count: int, numel_each: int) -> Workload:
    # Only Adam: this row measures per-step host cost, not the update math.
    return Workload(
        "host-overhead",
        ((numel_each,),) * count,
        f"{count} tensors of {numel_each} elements (Adam; host cost per step)",
        families=("adam",),
    )


def _split_unevenly(total: int, count: int, seed: int) -> List[int]:
    """``count`` sizes (each >= 1, most of them odd-sized) that sum to ``total``.

    Uneven sizes exercise the unaligned tails real parameter lists have.
    """
    rng = random.Random(seed)
    weights = [rng.uniform(0.25, 1.75) for _ in range(count)]
    scale = (total - count) / sum(weights)
    sizes = [1 + int(weight * scale) for weight in weights]
    sizes[-1] += total - sum(sizes)
    return sizes
