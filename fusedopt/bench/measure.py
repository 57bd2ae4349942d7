"""How the benchmark measures: clocks and round-robin sampling, the copy bandwidth, the
bytes an update must move (derived from each optimizer's spec), what it ran on, and the
loop over the timing units (by default every workload x dtype x optimizer case, with all
its contenders)."""
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fusedopt
import fusedopt.backends
from fusedopt._layout import LOW_PRECISION, MASTER_KEY, STEP_DTYPE
from fusedopt._native import build_info
from fusedopt.optim._plan import bucket_state_keys

from .contenders import Contender, TORCH_VARIANTS, fusedopt_contenders, probe, torch_contenders
from .workloads import OptimizerCase, Workload


# ----------------------------------------------------------------------------- clocks, copy bandwidth
class CpuClock:
    """Wall time of a call; CPU ops are synchronous, so that is the step's time."""

    def time_ms(self, call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3

    def synchronize(self) -> None:
        pass


class CudaClock:
    """GPU time of a call, measured with CUDA events from an idle GPU.

    Synchronizing first means a host-bound step (launch overhead) shows up in
    the measurement instead of hiding behind queued work from the previous call.
    """

    def time_ms(self, call: Callable[[], object]) -> float:
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def clock_for(device: torch.device):
    return CudaClock() if device.type == "cuda" else CpuClock()


def round_robin(
    calls: Sequence[Callable[[], object]], warmup: int, steps: int, clock
) -> List[List[float]]:
    """Milliseconds of each of ``steps`` calls of every callable, after ``warmup`` untimed ones.

    Contenders alternate call by call, so drift in clock speed, temperature or
    background load spreads over all of them; the starting contender rotates
    each round so none is always the one that follows a particular other.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    clock.synchronize()
    samples: List[List[float]] = [[] for _ in calls]
    for round_index in range(steps):
        for offset in range(len(calls)):
            index = (round_index + offset) % len(calls)
            samples[index].append(clock.time_ms(calls[index]))
    return samples


@dataclass(frozen=True)
class CopyBandwidth:
    tensor_bytes: int  # size of the source (and of the destination)
    bytes_moved: int  # read + write per copy
    median_ms: float
    gbps: float


def measure_copy_bandwidth(
    device: torch.device, tensor_bytes: int, repeats: int, clock
) -> CopyBandwidth:
    """Bandwidth of ``dst.copy_(src)``, counting the bytes read plus the bytes written."""
    source = torch.ones(tensor_bytes // 4, device=device, dtype=torch.float32)
    destination = torch.empty_like(source)
    # The warm-up copy faults in the destination's pages.
    samples = round_robin([lambda: destination.copy_(source)], warmup=1, steps=repeats, clock=clock)[0]
    median_ms = statistics.median(samples)
    size = source.numel() * source.element_size()
    return CopyBandwidth(size, 2 * size, median_ms, 2 * size / median_ms / 1e6)


# ----------------------------------------------------------------------------- bytes moved
# Short names used in the printed formulas; a state key not listed prints as itself.
_SYMBOLS = {
    "param": "p", "grad": "g", MASTER_KEY: "p32",
    "exp_avg": "m", "exp_avg_sq": "v", "max_exp_avg_sq": "vmax",
    "momentum_buffer": "buf", "square_avg": "sq", "grad_avg": "gavg",
}


@dataclass(frozen=True)
class Traffic:
    """The least one element's update must move: each tensor it reads read once, each
    tensor it writes written once, as (tensor name, bytes per element).

    The per-tensor step counter and scalar states (ASGD's eta and mu: each one float32 read
    and written per param tensor, not per element) are `bytes_per_tensor`; GB/s counts only
    the per-element bytes.
    """

    reads: Tuple[Tuple[str, int], ...]
    writes: Tuple[Tuple[str, int], ...]
    bytes_per_tensor: int

    @property
    def read_bytes(self) -> int:
        return sum(size for _, size in self.reads)

    @property
    def write_bytes(self) -> int:
        return sum(size for _, size in self.writes)

    @property
    def bytes_per_element(self) -> int:
        return self.read_bytes + self.write_bytes

    @property
    def formula(self) -> str:
        """E.g. 'reads p,g,m,v + writes p,m,v = 7 x 4 B = 28 B/elem'."""
        counts: Dict[int, int] = {}
        for _, size in self.reads + self.writes:
            counts[size] = counts.get(size, 0) + 1
        terms = " + ".join(f"{count} x {size} B" for size, count in counts.items())
        return (f"reads {_symbols(self.reads)} + writes {_symbols(self.writes)} = {terms}"
                f" = {self.bytes_per_element} B/elem")


def traffic(case: OptimizerCase, dtype: torch.dtype, master_weights: bool = False,
            grad_scaler: bool = False) -> Traffic:
    """What one step of ``case`` on params of ``dtype`` moves, from its spec's state keys.

    Gradients and states have the param's dtype, as in torch.optim. With master weights
    (16-bit params only) the states and the fp32 master copy, the last state row, are
    float32 and the master copy is read instead of the param, which is only written. With
    a GradScaler the unscaled grad is written back.
    """
    spec = case.optimizer_class.spec
    param_size = _itemsize(dtype)
    master = master_weights and uses_master(dtype)
    state_size = _itemsize(torch.float32) if master else param_size
    states = tuple((key, state_size) for key in bucket_state_keys(spec, case.spec_hyper, master))
    reads = (() if master else (("param", param_size),)) + (("grad", param_size),) + states
    writes = (("param", param_size),) + ((("grad", param_size),) if grad_scaler else ()) + states
    per_tensor = (int(spec.step_counter) + len(spec.scalar_states)) * 2 * _itemsize(STEP_DTYPE)  # read + written
    return Traffic(reads, writes, per_tensor)


def uses_master(dtype: torch.dtype) -> bool:
    """Whether master_weights=True gives params of this dtype an fp32 master copy."""
    return dtype in LOW_PRECISION


def _symbols(tensors: Sequence[Tuple[str, int]]) -> str:
    return ",".join(_SYMBOLS.get(name, name) for name, _ in tensors)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- environment
def describe_environment(device: torch.device, program: str, argv: Sequence[str]) -> Dict[str, object]:
    """``program`` and ``argv`` make up the command line recorded with the results."""
    return {
        "device": str(device),
        "device_name": gpu_name(device) or cpu_model(),
        "cpu_model": cpu_model(),
        "gpu_name": gpu_name(device),
        "num_threads": torch.get_num_threads(),
        "load_average_start": load_average(),  # the caller adds load_average_end
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "triton_version": _installed_version("triton"),
        "fusedopt_version": fusedopt.__version__,
        "fusedopt_info": _fusedopt_info(),
        "cuda_chunk_bytes": cuda_chunk_bytes(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "command_line": " ".join([program, *map(shlex.quote, argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cuda_chunk_bytes() -> Optional[int]:
    """The chunk size fusedopt's CUDA kernels run with (None without them)."""
    return fusedopt.backends.get("cuda").chunk_bytes or build_info().get("cuda_default_chunk_bytes")


def load_average() -> float:
    """The 1-minute load average: other work on the machine distorts CPU timings."""
    return os.getloadavg()[0]


def busy_machine_warning(environment: Dict[str, object]) -> Optional[str]:
    """A warning when other work already loads the CPU, or None.

    Parallel CPU ops then wait for descheduled threads, and their times grow
    many-fold and erratic; one thread per op suffers far less.
    """
    cores = os.cpu_count() or 1
    if environment["device"] != "cpu" or environment["load_average_start"] < cores / 2:
        return None
    return (
        f"warning: load average {environment['load_average_start']:.1f} on {cores} cores before"
        " starting: CPU timings will be noisy (--threads 1 is less affected)"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device)


def _installed_version(distribution: str) -> Optional[str]:
    # Read from package metadata: importing triton just for its version is slow.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fusedopt_info() -> Dict[str, object]:
    # Keep the JSON serialisable whatever info() puts in its values.
    return json.loads(json.dumps(fusedopt.info(), default=repr))


# ----------------------------------------------------------------------------- the run loop
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
    unit: int  # index of the Unit this row was timed in
    group: int  # rows of one unit and group were timed round-robin together


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


@dataclass(frozen=True)
class Unit:
    """Contenders timed round-robin together on one workload and dtype, each with the
    optimizer case it steps. The harness makes one unit per (workload, dtype, case); a
    bar makes its own, which may mix cases (Lion against SGD) and holds only the
    contenders it compares, so no third one runs between them."""

    workload: Workload
    dtype: torch.dtype
    entries: Tuple[Tuple[OptimizerCase, Contender], ...]

    @property
    def label(self) -> str:
        cases = " vs ".join(dict.fromkeys(case.label for case, _ in self.entries))
        return f"{self.workload.name} {dtype_name(self.dtype)} {cases}"


def run_benchmark(config: BenchConfig, progress: Optional[Progress] = None,
                  units: Optional[Sequence[Unit]] = None) -> BenchResult:
    """Time every unit (by default the harness's: each workload x dtype x case of ``config``
    with all its contenders); contenders that cannot step this device and dtype are skipped."""
    progress = progress or (lambda message: None)
    units = harness_units(config) if units is None else units
    clock = clock_for(config.device)
    progress("copy bandwidth")
    result = BenchResult(measure_copy_bandwidth(config.device, config.copy_bytes, config.copy_repeats, clock))
    for index, unit in enumerate(units):
        progress(unit.label)
        runnable = []
        for case, contender in unit.entries:
            reason = probe(contender, config.device, unit.dtype)
            if reason is None:
                runnable.append((case, contender))
            else:
                skipped = Skipped(unit.workload.name, dtype_name(unit.dtype), case.key, contender.label, reason)
                result.skipped.append(skipped)
        if runnable:
            result.rows += _time_unit(config, clock, index, unit.workload, unit.dtype, runnable, result.copy)
    return result


def harness_units(config: BenchConfig) -> List[Unit]:
    """One unit per workload x dtype x case (a workload may restrict its families), with
    each of the case's torch variants and fusedopt backends."""
    units = []
    for workload in config.workloads:
        for dtype in config.dtypes:
            for case in config.cases:
                if workload.families is not None and case.family not in workload.families:
                    continue
                contenders = torch_contenders(case, config.torch_variants)
                contenders += fusedopt_contenders(case, config.fusedopt_backends,
                                                  master_weights=config.master_weights and uses_master(dtype))
                units.append(Unit(workload, dtype, tuple((case, contender) for contender in contenders)))
    return units


def count_units(config: BenchConfig, units: Optional[Sequence[Unit]] = None) -> int:
    """How many progress messages a run prints after the copy measurement."""
    return len(harness_units(config) if units is None else units)


def _time_unit(config, clock, unit_index, workload, dtype, entries, copy) -> List[Row]:
    params = workload.make_tensors(dtype, config.device, PARAM_SEED)
    grads = workload.make_tensors(dtype, config.device, GRAD_SEED)
    bytes_per_contender = workload.numel * max(_bytes_held(case, dtype, c.master_weights) for case, c in entries)
    samples: List[List[float]] = []
    groups: List[int] = []
    for group_index, group in enumerate(_groups(list(entries), bytes_per_contender, config.device)):
        steps = [contender.make(_clone(params, grads)).step for _, contender in group]
        samples += round_robin(steps, config.warmup, config.steps, clock)
        groups += [group_index] * len(group)
        # Free this group's parameters and state before anything else allocates.
        # Some torch.optim optimizers sit in reference cycles, which only a full
        # collection frees; it costs ~0.1 s, so skip it when little memory is at stake.
        del steps
        if bytes_per_contender * len(group) >= _COLLECT_ABOVE_BYTES:
            gc.collect()
    medians = [statistics.median(times) for times in samples]
    # Speed-ups compare a row with torch's rows of its own case only.
    torch_medians: Dict[str, Dict[str, float]] = {}
    for (case, contender), med in zip(entries, medians):
        if contender.kind == "torch":
            torch_medians.setdefault(case.key, {})[contender.variant] = med
    rows = []
    for (case, contender), times, med, group in zip(entries, samples, medians, groups):
        bytes_per_element = traffic(case, dtype, contender.master_weights).bytes_per_element
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
                speedup_vs={variant: torch_ms / med
                            for variant, torch_ms in torch_medians.get(case.key, {}).items()},
                unit=unit_index,
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
    """Bytes per element one contender holds: what its step writes (the parameter and its
    states, the fp32 master copy among them), plus, without master weights, one temporary
    that torch's for-loop and foreach paths allocate."""
    held = traffic(case, dtype, master_weights).write_bytes
    return held if master_weights and uses_master(dtype) else held + _itemsize(dtype)


def _groups(contenders: List[Tuple[OptimizerCase, Contender]], bytes_each: int,
            device: torch.device) -> List[List[Tuple[OptimizerCase, Contender]]]:
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
