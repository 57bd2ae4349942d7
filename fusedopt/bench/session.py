"""One measured run, as both entry points (the harness and bench/cpu_bars.py) make it."""
import sys
from typing import Dict, Optional, Sequence, Tuple

import torch

from .environment import busy_machine_warning, describe_environment, load_average
from .progress import Progress
from .runner import BenchConfig, BenchResult, count_units, run_benchmark


def measure(
    config: BenchConfig, program: str, argv: Sequence[str], threads: Optional[int]
) -> Tuple[BenchResult, Dict[str, object]]:
    """Run ``config`` with progress on stderr; return the results and what they ran on.

    ``program`` and ``argv`` are recorded as the command line.
    """
    if threads:
        torch.set_num_threads(threads)
    environment = describe_environment(config.device, program, argv)
    warning = busy_machine_warning(environment)
    if warning:
        print(warning, file=sys.stderr)
    progress = Progress(total=count_units(config) + 1)  # + 1: the copy measurement
    result = run_benchmark(config, progress)
    progress.close()
    environment["load_average_end"] = load_average()
    return result, environment
