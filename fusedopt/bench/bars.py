"""`python -m fusedopt.bench bars`: fusedopt's CPU performance bars against torch.optim,
in one process.

    python -m fusedopt.bench bars [--quick] [--optimizers A,B] [--shapes S,T] [--list]
                                  [--steps N] [--warmup N] [--threads N] [--json PATH]

Each bar holds a fusedopt row to a baseline row, as a ratio of median step times on the
same parameters: it passes when fusedopt_time / baseline_time <= limit. The bars are
derived from the registry (every optimizer class fusedopt.optim exports), so a new
optimizer gets its bars with no edit here, unless torch.optim lacks it (then one
STAND_INS line). The bars are defined at full size (20M elements); --quick shrinks the
work for a fast smoke run, where the verdicts mean less. Exit status 1 when a bar fails
or could not be measured.
"""
import argparse
import functools
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .cli import comma_list, copy_bytes, default_step_counts, measure, positive_int, scale_of
from .contenders import TORCH_VARIANTS, Contender, fusedopt_contenders, torch_contenders
from .measure import BenchConfig, BenchResult, Row, Unit
from .report import format_table, to_json_document, write_json
from .torch_ops import torch_ops_contenders
from .workloads import OptimizerCase, all_cases, build_workloads, cases_by_key, families

PROGRAM = "python -m fusedopt.bench bars"

THROUGHPUT_SHAPES = ("large", "many-small")  # one 20M-element tensor; 200 tensors totalling 20M
HOST_SHAPE = "host-overhead"  # 1,000 tensors of 8 elements: the host cost of a step
SHAPES = (*THROUGHPUT_SHAPES, HOST_SHAPE)
MATCH_LIMIT = 1.05  # where torch has a fused CPU kernel (or for a stand-in's fusedopt row): match it
FOREACH_LIMIT = 1 / 3  # where torch's best is foreach: at least 3x faster
HOST_LIMIT = 0.25  # at least 4x less host time than torch's fastest implementation
BACKEND = "cpu"
# Torch's fastest implementation of a case on the CPU: the least median of its rows
# (for-loop, foreach, and fused where torch offers it), all timed in the bar's unit.
TORCH_FASTEST = "torch[fastest]"

# The only hand-written lines. A family's bars time its first case and fusedopt[cpu]
# unless named here.
_BAR_CASE = {"rmsprop": "rmsprop-centered"}  # RMSprop's costliest form (centered, momentum)
_BAR_ROW = {"adamw": f"fusedopt[{BACKEND},optimized_update]"}
# Optimizers torch.optim lacks: (the bar case of another family, the throughput limit).
# Throughput: held to fusedopt's own row of that case. Host overhead: to the same optimizer
# written with torch's foreach ops (fusedopt.bench.torch_ops) where one is written, else to
# torch's fastest implementation of the stand-in.
STAND_INS = {
    "lion": ("sgd", MATCH_LIMIT),  # Lion moves p, g, m like SGD with momentum
    "lamb": ("adam", 1.3),  # LAMB is Adam plus a norm pass that reads p, g, m, v once more
}


@dataclass(frozen=True)
class Side:
    """One side of a bar: the row of an optimizer case with this label, or, for
    TORCH_FASTEST, the fastest of torch.optim's rows of that case."""

    optimizer: str  # OptimizerCase key
    implementation: str  # row label ("fusedopt[cpu]", "torch[foreach]") or TORCH_FASTEST

    def describe(self, other_case: Optional[str] = None) -> str:
        """The label, preceded by the case's when it is not ``other_case``'s."""
        if self.optimizer == other_case:
            return self.implementation
        return f"{cases_by_key()[self.optimizer].label} {self.implementation}"


@dataclass(frozen=True)
class Bar:
    shape: str
    subject: Side  # the fusedopt row under test
    baseline: Side  # what it is held to: a torch row of the same case, or another case's row
    limit: float  # pass when subject_time / baseline_time <= limit

    @property
    def family(self) -> str:
        return cases_by_key()[self.subject.optimizer].family

    @property
    def name(self) -> str:
        """E.g. 'large Adagrad(): fusedopt[cpu] / torch[fused]',
        'large Lion(): fusedopt[cpu] / SGD(momentum=0.9) fusedopt[cpu]'."""
        label = cases_by_key()[self.subject.optimizer].label
        return (f"{self.shape} {label}: {self.subject.implementation}"
                f" / {self.baseline.describe(self.subject.optimizer)}")


def bar_case(family: str) -> OptimizerCase:
    """The case a family's bars time: _BAR_CASE's, else the family's first."""
    if family in _BAR_CASE:
        return cases_by_key()[_BAR_CASE[family]]
    return next(case for case in all_cases() if case.family == family)


def derive_bars(family: str) -> Tuple[Bar, ...]:
    """A family's bars: on each throughput shape, against torch's fused kernel (match it)
    where torch has one, else against its foreach path (3x faster); on the host-overhead
    shape, against torch's fastest implementation (4x less). A family torch.optim lacks is
    held to its STAND_INS case instead, but for host overhead to its torch-ops implementation
    where fusedopt.bench.torch_ops has one."""
    case = bar_case(family)
    subject = Side(case.key, _BAR_ROW.get(family, f"fusedopt[{BACKEND}]"))
    offered = [contender.variant for contender in torch_contenders(case, TORCH_VARIANTS)]
    if offered:
        variant, limit = ("fused", MATCH_LIMIT) if "fused" in offered else ("foreach", FOREACH_LIMIT)
        if variant not in offered:
            raise ValueError(f"torch.optim.{case.class_name} offers neither fused nor foreach: give {family}"
                             " its bars by hand")
        throughput, host = Side(case.key, f"torch[{variant}]"), Side(case.key, TORCH_FASTEST)
    elif family in STAND_INS:
        stand_in_family, limit = STAND_INS[family]
        stand_in = bar_case(stand_in_family)
        throughput = Side(stand_in.key, _BAR_ROW.get(stand_in.family, f"fusedopt[{BACKEND}]"))
        host = Side(case.key if torch_ops_contenders(case) else stand_in.key, TORCH_FASTEST)
    else:
        raise ValueError(f"torch.optim has no {case.class_name}: name the case {family} is held to in"
                         " fusedopt.bench.bars.STAND_INS (one that moves the same bytes)")
    return (*(Bar(shape, subject, throughput, limit) for shape in THROUGHPUT_SHAPES),
            Bar(HOST_SHAPE, subject, host, HOST_LIMIT))


@functools.lru_cache(maxsize=None)
def all_bars() -> Tuple[Bar, ...]:
    """Every registered optimizer's bars: by shape, then by family."""
    bars = [bar for family in families() for bar in derive_bars(family)]
    return tuple(sorted(bars, key=lambda bar: SHAPES.index(bar.shape)))  # stable: families stay in order


def select_bars(optimizers: Optional[Sequence[str]] = None, shapes: Optional[Sequence[str]] = None) -> List[Bar]:
    return [bar for bar in all_bars()
            if (optimizers is None or bar.family in optimizers) and (shapes is None or bar.shape in shapes)]


def contenders_of(side: Side) -> List[Tuple[OptimizerCase, Contender]]:
    """The contenders a side needs timed: one row, or each of torch's for TORCH_FASTEST."""
    case = cases_by_key()[side.optimizer]
    offered = torch_contenders(case, TORCH_VARIANTS) or torch_ops_contenders(case)
    if side.implementation == TORCH_FASTEST:
        return [(case, contender) for contender in offered]
    everything = offered + fusedopt_contenders(case, [BACKEND])
    return [(case, contender) for contender in everything if contender.label == side.implementation]


def bar_unit(bar: Bar, workload, dtype: torch.dtype) -> Unit:
    """The bar's own unit: exactly its contenders, the fusedopt row first, so no third
    contender runs between the two compared (torch's foreach allocates a temporary per
    tensor, which slows whatever runs next). The host-overhead bars time torch's variants
    together: their 8,000 elements stay in cache whatever runs in between."""
    return Unit(workload, dtype, tuple(contenders_of(bar.subject) + contenders_of(bar.baseline)))


@dataclass(frozen=True)
class Verdict:
    bar: str
    fusedopt_ms: Optional[float]
    baseline_ms: Optional[float]
    baseline: Optional[str]  # the baseline row's label (which one was torch's fastest)
    ratio: Optional[float]
    limit: float
    passed: bool


def main(argv: Sequence[str]) -> int:
    options = _parse_arguments(argv)
    bars = select_bars(options.optimizers, options.shapes)
    if options.list:
        print(format_table(["bar", "limit"], [[bar.name, f"<= {bar.limit:.3f}"] for bar in bars], 1))
        return 0
    config = _config(options, bars)
    workloads = {workload.name: workload for workload in config.workloads}
    units = [bar_unit(bar, workloads[bar.shape], torch.float32) for bar in bars]
    result, environment = measure(config, PROGRAM, argv, options.threads, units)
    verdicts = [_judge(bar, index, result) for index, bar in enumerate(bars)]
    print(f"CPU bars on {environment['device_name']}, {environment['num_threads']} threads,"
          f" load average {environment['load_average_start']:.1f}"
          f" to {environment['load_average_end']:.1f},"
          f" torch {environment['torch_version']}, fusedopt {environment['fusedopt_version']}"
          f" ({scale_of(options)} sizes, median of {config.steps} steps)")
    print(_format_verdicts(bars, verdicts))
    for item in result.skipped:
        print(f"skipped {item.shape} {item.optimizer} {item.implementation}: {item.reason}")
    if options.json:
        settings = {"scale": scale_of(options), "bars": [bar.name for bar in bars]}
        document = to_json_document(result, config, environment, settings)
        write_json(options.json, {"bars": [asdict(verdict) for verdict in verdicts], "benchmarks": [document]})
    return 0 if all(verdict.passed for verdict in verdicts) else 1


def _parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Check fusedopt's CPU performance bars against torch.optim, in one process.")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (smoke run)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for tests
    parser.add_argument("--optimizers", type=comma_list(families()), default=None,
                        help=f"only these optimizers' bars, comma-separated from {','.join(families())}"
                             " (default: all)")
    parser.add_argument("--shapes", type=comma_list(SHAPES), default=None,
                        help=f"only the bars on these shapes, comma-separated from {','.join(SHAPES)}"
                             " (default: all)")
    parser.add_argument("--list", action="store_true", help="print the selected bars and limits, time nothing")
    parser.add_argument("--steps", type=positive_int, default=None, help="timed steps per contender")
    parser.add_argument("--warmup", type=positive_int, default=None, help="untimed steps first")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads first")
    parser.add_argument("--json", metavar="PATH", help="write the verdicts and every timing here")
    return parser.parse_args(argv)


def _config(options: argparse.Namespace, bars: Sequence[Bar]) -> BenchConfig:
    device = torch.device("cpu")
    scale = scale_of(options)
    warmup, steps = default_step_counts(scale, device)
    keys = [key for bar in bars for key in (bar.subject.optimizer, bar.baseline.optimizer)]
    return BenchConfig(
        device=device,
        workloads=build_workloads(sorted({bar.shape for bar in bars}), device, scale),
        dtypes=[torch.float32],
        cases=[cases_by_key()[key] for key in dict.fromkeys(keys)],  # what the JSON's traffic lists
        fusedopt_backends=[BACKEND],
        steps=options.steps or steps,
        warmup=options.warmup or warmup,
        copy_bytes=copy_bytes(scale, device),
    )


def _judge(bar: Bar, unit: int, result: BenchResult) -> Verdict:
    rows = [row for row in result.rows if row.unit == unit]

    def rows_of(side: Side) -> List[Row]:
        return [row for row in rows if row.optimizer == side.optimizer
                and (row.kind == "torch" if side.implementation == TORCH_FASTEST
                     else row.implementation == side.implementation)]

    subject = rows_of(bar.subject)
    baseline = min(rows_of(bar.baseline), key=lambda row: row.median_ms, default=None)
    if not subject or baseline is None:  # not measured: a failure, not a pass
        return Verdict(bar.name, subject[0].median_ms if subject else None,
                       baseline.median_ms if baseline else None, baseline.implementation if baseline else None,
                       None, bar.limit, passed=False)
    ratio = subject[0].median_ms / baseline.median_ms
    return Verdict(bar.name, subject[0].median_ms, baseline.median_ms, baseline.implementation, ratio, bar.limit,
                   passed=ratio <= bar.limit)


def _format_verdicts(bars: Sequence[Bar], verdicts: Sequence[Verdict]) -> str:
    def number(value: Optional[float], digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        [verdict.bar, number(verdict.fusedopt_ms, 3), number(verdict.baseline_ms, 3),
         # which of torch's rows was the fastest, where the bar does not name one
         (verdict.baseline or "-") if bar.baseline.implementation == TORCH_FASTEST else "",
         number(verdict.ratio, 3), f"<= {verdict.limit:.3f}",
         "PASS" if verdict.passed else "FAIL" if verdict.ratio is not None else "FAIL (not measured)"]
        for bar, verdict in zip(bars, verdicts)
    ]
    headers = ["bar", "fusedopt ms", "baseline ms", "fastest", "ratio", "limit", "verdict"]
    return format_table(headers, rows, right_aligned_from=1)
