"""The measurement loop: every workload x dtype x optimizer case x contender."""
import gc
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .cases import OptimizerCase
from .contenders import Contender, TORCH_VARIANTS, fusedopt_contenders, probe, torch_contenders
from .timing import CopyBandwidth, clock_for, measure_copy_bandwidth, round_robin
from .traffic import uses_master
from .workloads import Workload

PARAM_SEED, GRAD_SEED = 0, 1
_COLLECT_ABOVE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    workloads: Sequence[Workload]
    dtypes: Sequence[torch.dtype]
    cases: Sequence[OptimizerCase]
    fusedopt_backends: Sequence[str]
    steps: int
    warmup: int
    copy_bytes: int
    copy_repeats: int = 20
    torch_variants: Sequence[str] = tuple(TORCH_VARIANTS)
    master_weights: bool = False  # also time fusedopt with fp32 master weights on 16-bit params


@dataclass(frozen=True)
class Row:
    shape: str
    dtype: str
    optimizer: str  # OptimizerCase.key
    optimizer_label: str
    implementation: str  # Contender.label
    kind: str
    variant: str
    num_tensors: int
    numel: int
    bytes_per_element: int
    median_ms: float
    min_ms: float
    samples_ms: List[float]
    gbps: float
    pct_of_copy: float
    # torch variant -> torch's median time / this row's median time (> 1: this row is faster)
    speedup_vs: Dict[str, float]
    group: int  # contenders with the same group were timed round-robin together


@dataclass(frozen=True)
class Skipped:
    shape: str
    dtype: str
    optimizer: str
    implementation: str
    reason: str


@dataclass
class BenchResult:
    copy: CopyBandwidth
    rows: List[Row] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)


Progress = Callable[[str], None]


def run_benchmark(config: BenchConfig, progress: Optional[Progress] = None) -> BenchResult:
    progress = progress or (lambda message: None)
    clock = clock_for(config.device)
    progress("copy bandwidth")
    result = BenchResult(measure_copy_bandwidth(config.device, config.copy_bytes, config.copy_repeats, clock))
    for workload, dtype, case in _units(config):
        progress(f"{workload.name} {dtype_name(dtype)} {case.label}")
        contenders = torch_contenders(case, config.torch_variants)
        contenders += fusedopt_contenders(case, config.fusedopt_backends,
                                          master_weights=config.master_weights and uses_master(dtype))
        runnable = []
        for contender in contenders:
            reason = probe(contender, config.device, dtype)
            if reason is None:
                runnable.append(contender)
            else:
                skipped = Skipped(workload.name, dtype_name(dtype), case.key, contender.label, reason)
                result.skipped.append(skipped)
        if runnable:
            result.rows += _time_unit(config, clock, workload, dtype, case, runnable, result.copy)
    return result


def _units(config: BenchConfig) -> List[Tuple[Workload, torch.dtype, OptimizerCase]]:
    return [
        (workload, dtype, case)
        for workload in config.workloads
        for dtype in config.dtypes
        for case in config.cases
        if workload.families is None or case.family in workload.families
    ]


def count_units(config: BenchConfig) -> int:
    """How many progress messages a run prints after the copy measurement."""
    return len(_units(config))


def _time_unit(config, clock, workload, dtype, case, contenders, copy) -> List[Row]:
    params = workload.make_tensors(dtype, config.device, PARAM_SEED)
    grads = workload.make_tensors(dtype, config.device, GRAD_SEED)
    bytes_per_contender = workload.numel * max(_bytes_held(case, dtype, c.master_weights) for c in contenders)
    samples: List[List[float]] = []
    groups: List[int] = []
    for group_index, group in enumerate(_groups(contenders, bytes_per_contender, config.device)):
        steps = [contender.make(_clone(params, grads)).step for contender in group]
        samples += round_robin(steps, config.warmup, config.steps, clock)
        groups += [group_index] * len(group)
        # Free this group's parameters and state before anything else allocates.
        # Some torch.optim optimizers sit in reference cycles, which only a full
        # collection frees; it costs ~0.1 s, so skip it when little memory is at stake.
        del steps
        if bytes_per_contender * len(group) >= _COLLECT_ABOVE_BYTES:
            gc.collect()
    medians = [statistics.median(times) for times in samples]
    torch_medians = {
        contender.variant: med for contender, med in zip(contenders, medians) if contender.kind == "torch"
    }
    rows = []
    for contender, times, med, group in zip(contenders, samples, medians, groups):
        bytes_per_element = case.traffic.bytes_per_element(dtype, contender.master_weights)
        gbps = bytes_per_element * workload.numel / med / 1e6
        rows.append(
            Row(
                shape=workload.name,
                dtype=dtype_name(dtype),
                optimizer=case.key,
                optimizer_label=case.label,
                implementation=contender.label,
                kind=contender.kind,
                variant=contender.variant,
                num_tensors=workload.num_tensors,
                numel=workload.numel,
                bytes_per_element=bytes_per_element,
                median_ms=med,
                min_ms=min(times),
                samples_ms=times,
                gbps=gbps,
                pct_of_copy=100.0 * gbps / copy.gbps,
                speedup_vs={variant: torch_ms / med for variant, torch_ms in torch_medians.items()},
                group=group,
            )
        )
    return rows


def _clone(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """A contender's own parameters; the gradients are shared, since no step writes them."""
    clones = []
    for param, grad in zip(params, grads):
        clone = param.clone().requires_grad_(True)
        clone.grad = grad
        clones.append(clone)
    return clones


def _bytes_held(case: OptimizerCase, dtype: torch.dtype, master_weights: bool) -> int:
    """Bytes per element one contender holds: the parameter, its state, and one temporary
    that torch's for-loop and foreach paths allocate; with master weights the fp32 master
    copy and fp32 states instead."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    states = len(case.traffic.state_tensors)
    if master_weights and uses_master(dtype):
        return itemsize + 4 * (1 + states)
    return itemsize * (2 + states)


def _groups(contenders: List[Contender], bytes_each: int, device: torch.device) -> List[List[Contender]]:
    """Split contenders into groups that fit in memory together (usually one group).

    Timing all contenders round-robin is the fairest comparison, but GPT-2 XL's
    parameters and Adam state for six contenders do not fit on one GPU.
    """
    fit = max(1, int(_free_memory_bytes(device) * 0.8) // max(1, bytes_each))
    count = math.ceil(len(contenders) / fit)
    size = math.ceil(len(contenders) / count)
    return [contenders[start : start + size] for start in range(0, len(contenders), size)]


def _free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        # Blocks freed by earlier groups stay cached by torch's allocator but are reusable.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
