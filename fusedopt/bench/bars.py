"""`python -m fusedopt.bench bars`: fusedopt's CPU performance bars against torch.optim,
in one process.

    python -m fusedopt.bench bars [--quick] [--steps N] [--warmup N] [--threads N] [--json PATH]

Each bar compares median step times of the same parameters, timed round-robin by the
harness: it passes when fusedopt_time / torch_time <= limit. The bars are defined at
full size (20M elements); --quick shrinks the work for a fast smoke run, where the
verdicts mean less. Exit status 1 when a bar fails or could not be measured.
"""
import argparse
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch

from .cli import copy_bytes, default_step_counts, measure, positive_int, scale_of
from .measure import BenchConfig, BenchResult
from .report import format_table, to_json_document, write_json
from .workloads import build_workloads, cases_by_key

PROGRAM = "python -m fusedopt.bench bars"


@dataclass(frozen=True)
class Bar:
    shape: str
    optimizer: str  # OptimizerCase key
    fusedopt: str  # row label of the fusedopt contender
    torch_variant: str
    limit: float  # pass when fusedopt_time / torch_time <= limit

    @property
    def name(self) -> str:
        case = cases_by_key()[self.optimizer]
        return f"{self.shape} {case.label}: {self.fusedopt} / torch[{self.torch_variant}]"


BARS = (
    *(
        bar
        for shape in ("large", "many-small")
        for bar in (
            Bar(shape, "adam", "fusedopt[cpu]", "fused", 1.05),
            Bar(shape, "adamw", "fusedopt[cpu,optimized_update]", "fused", 1.05),
            Bar(shape, "sgd", "fusedopt[cpu]", "fused", 1.05),
            Bar(shape, "rmsprop-centered", "fusedopt[cpu]", "foreach", 1 / 3),  # >= 3x faster
        )
    ),
    Bar("host-overhead", "adam", "fusedopt[cpu]", "fused", 0.25),
)


@dataclass(frozen=True)
class Verdict:
    bar: str
    fusedopt_ms: Optional[float]
    torch_ms: Optional[float]
    ratio: Optional[float]
    limit: float
    passed: bool


def main(argv: Sequence[str]) -> int:
    options = _parse_arguments(argv)
    # Each torch variant is timed only against the bars that name it: every bar's two
    # contenders alternate without a third polluting the caches between them (torch's
    # foreach allocates a temporary per tensor, which slows whatever runs next).
    verdicts: List[Verdict] = []
    documents, skipped = [], []
    environment = None
    for variant in dict.fromkeys(bar.torch_variant for bar in BARS):
        bars = [bar for bar in BARS if bar.torch_variant == variant]
        config = _config(options, bars)
        result, measured_on = measure(config, PROGRAM, argv, options.threads)
        if environment is None:
            environment = measured_on
        environment["load_average_end"] = measured_on["load_average_end"]
        verdicts += [_judge(bar, result) for bar in bars]
        skipped += result.skipped
        documents.append(to_json_document(result, config, environment, {"scale": scale_of(options)}))
    verdicts.sort(key=lambda verdict: [bar.name for bar in BARS].index(verdict.bar))
    print(f"CPU bars on {environment['device_name']}, {environment['num_threads']} threads,"
          f" load average {environment['load_average_start']:.1f}"
          f" to {environment['load_average_end']:.1f},"
          f" torch {environment['torch_version']}, fusedopt {environment['fusedopt_version']}"
          f" ({scale_of(options)} sizes, median of {config.steps} steps)")
    print(_format_verdicts(verdicts))
    for item in skipped:
        print(f"skipped {item.shape} {item.optimizer} {item.implementation}: {item.reason}")
    if options.json:
        write_json(options.json, {"bars": [asdict(verdict) for verdict in verdicts], "benchmarks": documents})
    return 0 if all(verdict.passed for verdict in verdicts) else 1


def _parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Check fusedopt's CPU performance bars against torch.optim, in one process.")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (smoke run)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for tests
    parser.add_argument("--steps", type=positive_int, default=None, help="timed steps per contender")
    parser.add_argument("--warmup", type=positive_int, default=None, help="untimed steps first")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads first")
    parser.add_argument("--json", metavar="PATH", help="write the verdicts and every timing here")
    return parser.parse_args(argv)


def _config(options: argparse.Namespace, bars: Sequence[Bar]) -> BenchConfig:
    device = torch.device("cpu")
    scale = scale_of(options)
    warmup, steps = default_step_counts(scale, device)
    return BenchConfig(
        device=device,
        workloads=build_workloads(sorted({bar.shape for bar in bars}), device, scale),
        dtypes=[torch.float32],
        cases=[cases_by_key()[key] for key in dict.fromkeys(bar.optimizer for bar in bars)],
        fusedopt_backends=["cpu"],
        steps=options.steps or steps,
        warmup=options.warmup or warmup,
        copy_bytes=copy_bytes(scale, device),
        torch_variants=sorted({bar.torch_variant for bar in bars}),
    )


def _judge(bar: Bar, result: BenchResult) -> Verdict:
    def median_of(implementation: str) -> Optional[float]:
        for row in result.rows:
            if (row.shape, row.optimizer, row.implementation) == (bar.shape, bar.optimizer, implementation):
                return row.median_ms
        return None

    fusedopt_ms = median_of(bar.fusedopt)
    torch_ms = median_of(f"torch[{bar.torch_variant}]")
    if fusedopt_ms is None or torch_ms is None:  # not measured: a failure, not a pass
        return Verdict(bar.name, fusedopt_ms, torch_ms, None, bar.limit, passed=False)
    ratio = fusedopt_ms / torch_ms
    return Verdict(bar.name, fusedopt_ms, torch_ms, ratio, bar.limit, passed=ratio <= bar.limit)


def _format_verdicts(verdicts: Sequence[Verdict]) -> str:
    def number(value: Optional[float], digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        [verdict.bar, number(verdict.fusedopt_ms, 3), number(verdict.torch_ms, 3),
         number(verdict.ratio, 3), f"<= {verdict.limit:.3f}",
         "PASS" if verdict.passed else "FAIL" if verdict.ratio is not None else "FAIL (not measured)"]
        for verdict in verdicts
    ]
    headers = ["bar", "fusedopt ms", "torch ms", "ratio", "limit", "verdict"]
    return format_table(headers, rows, right_aligned_from=1)

