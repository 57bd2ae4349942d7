"""What the benchmark updates: the parameter lists ("shapes" of work) and the optimizer
cases, one per fusedopt optimizer class (fusedopt.optim.__all__) and so per registered
OptimizerSpec, with a few extra option sets for the existing ones.

Sizes depend on the device and on the scale: "full" (the real sizes),
"quick" (about a minute on a quiet 2-core CPU) and "tiny" (tests only).
"""
import functools
import inspect
import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch

import fusedopt.optim
from fusedopt.optim._plan import group_hyper
from fusedopt.optim._spec import elementwise_kinds

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


def params_with_grads(shapes, device="cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> List[torch.nn.Parameter]:
    """Params of these shapes with grads, standard-normal from a CPU generator (the same values
    on every device), for the scripts that time or measure one optimizer on a model's shapes."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator).to(device=device, dtype=dtype))
        p.grad = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        params.append(p)
    return params


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
    # The harness times only Adam here: this row measures per-step host cost, not the
    # update math. The bars time every optimizer on it (bars.py builds its own units).
    return Workload(
        "host-overhead",
        ((numel_each,),) * count,
        f"{count} tensors of {numel_each} elements (host cost per step)",
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


# ----------------------------------------------------------------------------- optimizer cases
# Option sets timed beyond each class's defaults, by class name: (key suffix, options,
# fusedopt-only boolean options that each get a row of their own). A class not named here
# (a new optimizer) is timed once with its defaults, with no edit here.
_CASE_OPTIONS: Mapping[str, Tuple[Tuple[str, Mapping, Tuple[str, ...]], ...]] = {
    "AdamW": (("", {"weight_decay": 1e-2}, ("optimized_update",)),),
    "SGD": (("", {"momentum": 0.9}, ()),),
    "RMSprop": (("", {}, ()), ("centered", {"centered": True, "momentum": 0.9}, ())),
}


@dataclass(frozen=True)
class FusedoptVariant:
    """A fusedopt-only option timed as its own row, e.g. AdamW's optimized_update."""

    suffix: str  # appended to the row label: fusedopt[cpu,<suffix>]
    kwargs: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerCase:
    key: str  # unique id used in JSON, e.g. "rmsprop-centered"
    family: str  # the `--optimizers` name that selects it: the class name, lower case
    optimizer_class: Type  # fusedopt's class; torch.optim's of the same name, where it has one
    hyper: Mapping  # constructor options every contender gets (lr: the fusedopt default)
    spec_hyper: Mapping  # the same options as the spec's hyper-parameters, by name
    fusedopt_variants: Tuple[FusedoptVariant, ...] = (FusedoptVariant(""),)

    @property
    def class_name(self) -> str:
        return self.optimizer_class.__name__

    @property
    def label(self) -> str:
        args = ", ".join(f"{name}={value}" for name, value in self.hyper.items() if name != "lr")
        return f"{self.class_name}({args})"


def optimizer_classes() -> List[Type]:
    """fusedopt's optimizer classes in fusedopt.optim.__all__ order, each carrying a
    registered spec (AdamW is kind adam with decoupled weight decay), element-wise ones only
    (Adafactor's factored kernel has its own bench: fusedopt/bench/adafactor.py)."""
    kinds = elementwise_kinds()
    classes = [getattr(fusedopt.optim, name) for name in fusedopt.optim.__all__]
    # SparseAdam takes sparse grads only: its bar is fusedopt/bench/sparse_adam.py
    return [cls for cls in classes if isinstance(cls, type) and getattr(cls, "spec", None) in kinds.values()
            and not getattr(cls, "sparse_grads_only", False)]


@functools.lru_cache(maxsize=None)
def all_cases() -> Tuple[OptimizerCase, ...]:
    return tuple(
        optimizer_case(cls, options, suffix, extra)
        for cls in optimizer_classes()
        for suffix, options, extra in _CASE_OPTIONS.get(cls.__name__, (("", {}, ()),))
    )


def optimizer_case(cls: Type, options: Mapping, suffix: str = "", extra: Sequence[str] = ()) -> OptimizerCase:
    """``cls`` with ``options`` (and its default lr); each of ``extra`` (boolean options)
    adds a fusedopt row with that option on."""
    family = cls.__name__.lower()
    hyper = {"lr": _default_lr(cls), **options}
    variants = (FusedoptVariant(""), *(FusedoptVariant(name, {name: True}) for name in extra))
    return OptimizerCase(f"{family}-{suffix}" if suffix else family, family, cls, hyper, _spec_hyper(cls, hyper),
                         fusedopt_variants=variants)


def families() -> Tuple[str, ...]:
    """What `--optimizers` accepts; a family may expand to several cases."""
    return tuple(dict.fromkeys(case.family for case in all_cases()))


def cases_by_key() -> Dict[str, OptimizerCase]:
    return {case.key: case for case in all_cases()}


def cases_for_families(names: Sequence[str]) -> List[OptimizerCase]:
    """The cases selected by `--optimizers`, in the canonical order."""
    unknown = set(names) - set(families())
    if unknown:
        raise ValueError(f"unknown optimizer(s) {sorted(unknown)}; choose from {list(families())}")
    return [case for case in all_cases() if case.family in names]


def _default_lr(cls: Type) -> float:
    default = inspect.signature(cls).parameters["lr"].default
    return 1e-3 if default is inspect.Parameter.empty else default


def _spec_hyper(cls: Type, hyper: Mapping) -> Dict:
    """``hyper`` as the class maps its param group onto its spec's names (Adam's betas)."""
    optimizer = cls([torch.zeros(1, requires_grad=True)], **hyper, backend="reference")
    return group_hyper(optimizer, optimizer.param_groups[0])
