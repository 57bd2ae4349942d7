"""`python -m fusedopt.bench`: its options, the BenchConfig they select, and one measured
run as every subcommand makes it (progress on stderr, what it ran on)."""
import argparse
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .contenders import TORCH_VARIANTS, fusedopt_backends
from .measure import (BenchConfig, BenchResult, Unit, busy_machine_warning, count_units, describe_environment,
                      load_average, run_benchmark)
from .report import Progress, check_matplotlib, format_report, plot_bandwidth, to_json_document, write_json
from .workloads import SHAPE_NAMES, build_workloads, cases_for_families, default_shape_names, families

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# (warm-up steps, timed steps) per scale and device type. A GPU step is short
# and noisier, so it gets more samples.
_STEP_COUNTS = {
    ("full", "cpu"): (5, 30), ("full", "cuda"): (10, 100),
    ("quick", "cpu"): (3, 10), ("quick", "cuda"): (5, 30),
    ("tiny", "cpu"): (1, 3), ("tiny", "cuda"): (1, 3),
}
# Size of the source tensor of the copy-bandwidth reference.
_COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30, "tiny": 8 * 2**20}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fusedopt.bench",
        description=(
            "Time fusedopt's optimizers against torch.optim (for-loop, foreach, fused) on the"
            " same parameters, and report ms/step, achieved GB/s, % of copy bandwidth and"
            " speed-ups."
        ),
        epilog="`python -m fusedopt.bench bars` checks the CPU performance bars instead (see its --help).",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device,
                        help=f"device to run on (default: {default_device})")
    parser.add_argument("--optimizers", type=comma_list(families()), default=list(families()),
                        help=f"comma-separated subset of {','.join(families())} (default: all)")
    parser.add_argument("--backend", type=comma_list(None), default=None,
                        help="fusedopt backend(s) to time, comma-separated (default: every backend"
                             " available on the device, less Triton's interpreter on the CPU)")
    parser.add_argument("--dtypes", type=comma_list(DTYPES), default=["float32", "bfloat16"],
                        help="comma-separated parameter dtypes (default: float32,bfloat16)")
    parser.add_argument("--shapes", type=comma_list(SHAPE_NAMES), default=None,
                        help=f"comma-separated subset of {','.join(SHAPE_NAMES)}"
                             " (default: all but gpt2-xl on the CPU)")
    parser.add_argument("--torch-variants", type=comma_list(TORCH_VARIANTS), default=list(TORCH_VARIANTS),
                        help=f"comma-separated subset of torch.optim's {','.join(TORCH_VARIANTS)} to time"
                             " (default: all; for-loop takes seconds per step on 10,000 tensors)")
    parser.add_argument("--master-weights", action="store_true",
                        help="on float16/bfloat16 params, also time each fusedopt backend with"
                             " master_weights=True (fp32 master copy and states)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few steps (about a minute on a quiet 2-core CPU)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # for tests
    parser.add_argument("--steps", type=positive_int, default=None,
                        help=f"timed steps per contender (default: {_defaults_help(1)})")
    parser.add_argument("--warmup", type=positive_int, default=None,
                        help=f"untimed steps per contender first (default: {_defaults_help(0)})")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads before timing (default: torch's choice)")
    parser.add_argument("--cuda-chunk-bytes", type=positive_int, default=None,
                        help="bytes of each param-dtype list one thread block of fusedopt's CUDA kernels"
                             " updates (a multiple of 4096; default: the build's, shown by"
                             " `python -m fusedopt`): run once per size to compare")
    parser.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    parser.add_argument("--plot", metavar="PATH", help="write a bandwidth bar chart (PNG; needs matplotlib)")
    return parser


def main(argv: Sequence[str]) -> int:
    """The harness: time, print the table, write --json and --plot."""
    options = parse_arguments(argv)
    config = build_config(options)
    if options.cuda_chunk_bytes:
        import fusedopt.backends

        fusedopt.backends.get("cuda").chunk_bytes = options.cuda_chunk_bytes
    result, environment = measure(config, "python -m fusedopt.bench", argv, options.threads)
    print(format_report(result, config, environment))
    if options.json:
        write_json(options.json, to_json_document(result, config, environment, settings_of(options, config)))
        print(f"\nwrote {options.json}")
    if options.plot:
        title = f"{environment['device_name']}: optimizer step bandwidth"
        plot_bandwidth(result, options.plot, title)
        print(f"wrote {options.plot}")
    return 0


def measure(
    config: BenchConfig, program: str, argv: Sequence[str], threads: Optional[int],
    units: Optional[Sequence[Unit]] = None,
) -> Tuple[BenchResult, Dict[str, object]]:
    """Run ``config`` (its ``units`` when given) with progress on stderr; return the
    results and what they ran on.

    ``program`` and ``argv`` are recorded as the command line.
    """
    if threads:
        torch.set_num_threads(threads)
    environment = describe_environment(config.device, program, argv)
    warning = busy_machine_warning(environment)
    if warning:
        print(warning, file=sys.stderr)
    progress = Progress(total=count_units(config, units) + 1)  # + 1: the copy measurement
    result = run_benchmark(config, progress, units)
    progress.close()
    environment["load_average_end"] = load_average()
    return result, environment


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if options.plot:
        try:
            check_matplotlib()
        except ImportError as error:
            parser.error(str(error))
    options.scale = scale_of(options)
    return options


def scale_of(options: argparse.Namespace) -> str:
    """The workload scale that --quick and the hidden --tiny select."""
    return "tiny" if options.tiny else "quick" if options.quick else "full"


def build_config(options: argparse.Namespace) -> BenchConfig:
    device = torch.device(options.device)
    warmup, steps = default_step_counts(options.scale, device)
    shape_names = options.shapes or default_shape_names(device)
    return BenchConfig(
        device=device,
        workloads=build_workloads(shape_names, device, options.scale),
        dtypes=[DTYPES[name] for name in options.dtypes],
        cases=cases_for_families(options.optimizers),
        fusedopt_backends=options.backend or fusedopt_backends(device),
        steps=options.steps or steps,
        warmup=options.warmup or warmup,
        copy_bytes=copy_bytes(options.scale, device),
        torch_variants=tuple(options.torch_variants),
        master_weights=options.master_weights,
    )


def settings_of(options: argparse.Namespace, config: BenchConfig) -> Dict[str, object]:
    """The selections of this run, as recorded in the JSON document."""
    return {
        "scale": options.scale,
        "shapes": [workload.name for workload in config.workloads],
        "dtypes": list(options.dtypes),
        "optimizers": list(options.optimizers),
        "cases": [case.key for case in config.cases],
        "fusedopt_backends": list(config.fusedopt_backends),
        "torch_variants": list(config.torch_variants),
        "master_weights": config.master_weights,
    }


def default_step_counts(scale: str, device: torch.device) -> Tuple[int, int]:
    """(warm-up steps, timed steps) unless --warmup and --steps say otherwise."""
    return _STEP_COUNTS[scale, device.type]


def copy_bytes(scale: str, device: torch.device) -> int:
    return _COPY_BYTES["tiny" if scale == "tiny" else device.type]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _defaults_help(index: int) -> str:
    """E.g. 'cpu 30, cuda 100, cpu --quick 10, cuda --quick 30' for the timed steps."""
    return ", ".join(
        f"{device}{' --quick' if scale == 'quick' else ''} {counts[index]}"
        for (scale, device), counts in _STEP_COUNTS.items()
        if scale != "tiny"
    )


def comma_list(choices: Optional[Sequence[str]]):
    def parse(text: str) -> List[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if choices is not None and item not in choices]
        if not items or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices or ['names'])}, got {text!r}"
            )
        return items

    return parse
