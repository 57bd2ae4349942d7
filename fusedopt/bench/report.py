"""What a run shows: the terminal table, the JSON document, the bandwidth plot (PNG; needs
matplotlib) and the progress lines on stderr (so stdout stays a clean table)."""
import dataclasses
import json
import math
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from .contenders import TORCH_VARIANTS
from .measure import BenchConfig, BenchResult, Row, dtype_name, traffic, uses_master

JSON_SCHEMA_VERSION = 1
_COLUMNS = ("dtype", "optimizer", "implementation", "ms/step", "GB/s", "% copy",
            *(f"vs {variant}" for variant in TORCH_VARIANTS))
_NUMERIC_FROM = _COLUMNS.index("ms/step")  # columns from here on are right-aligned


def format_report(result: BenchResult, config: BenchConfig, environment: Mapping) -> str:
    lines = [
        f"fusedopt benchmark on {environment['device']} ({environment['device_name']}),"
        f" {environment['num_threads']} threads,"
        f" load average {environment['load_average_start']:.1f} at start,"
        f" {environment['load_average_end']:.1f} at end",
        f"torch {environment['torch_version']}, triton {environment['triton_version']},"
        f" fusedopt {environment['fusedopt_version']}"
        + (f" (CUDA chunks of {environment['cuda_chunk_bytes']} bytes per list)"
           if environment.get("cuda_chunk_bytes") else ""),
        f"copy bandwidth: {result.copy.gbps:.1f} GB/s"
        f" (dst.copy_(src) of {result.copy.tensor_bytes / 2**20:.0f} MiB, bytes read + written)",
        f"each row: median of {config.steps} timed steps after {config.warmup} warm-up;"
        " GB/s from the bytes below; 'vs X' = X's time / this row's time",
        "",
        "Bytes one update must move per element:",
    ]
    lines += [
        f"  {entry['optimizer_label']:<40} {entry['dtype']:<9} {entry['formula']}"
        for entry in traffic_entries(config)
    ]
    for workload in config.workloads:
        rows = [row for row in result.rows if row.shape == workload.name]
        if rows:
            lines += ["", f"{workload.name}: {workload.description}", _format_rows(rows)]
    if result.skipped:
        lines += ["", "Skipped (could not step a parameter of this device and dtype):"]
        lines += [
            f"  {item.shape} {item.dtype} {item.optimizer} {item.implementation}: {item.reason}"
            for item in result.skipped
        ]
    return "\n".join(lines)


def traffic_entries(config: BenchConfig) -> List[Dict[str, object]]:
    """The per-element byte count of every optimizer case and dtype, with its formula (and,
    with --master-weights, of the master-weights rows of 16-bit dtypes)."""
    entries = []
    for case in config.cases:
        for dtype in config.dtypes:
            for master in (False, True) if config.master_weights and uses_master(dtype) else (False,):
                moved = traffic(case, dtype, master)
                entries.append(
                    {"optimizer": case.key, "optimizer_label": case.label + (" master_weights" if master else ""),
                     "dtype": dtype_name(dtype), "bytes_per_element": moved.bytes_per_element,
                     "read_bytes": moved.read_bytes, "write_bytes": moved.write_bytes,
                     "bytes_per_tensor": moved.bytes_per_tensor, "formula": moved.formula, "master_weights": master})
    return entries


def _format_rows(rows: Sequence[Row]) -> str:
    table: List[Optional[List[str]]] = []
    previous_block = None
    for row in rows:
        block = (row.dtype, row.optimizer)
        if previous_block is not None and block != previous_block:
            table.append(None)  # blank line between optimizer blocks
        previous_block = block
        table.append(
            [
                row.dtype,
                row.optimizer_label,
                row.implementation,
                f"{row.median_ms:.3f}",
                f"{row.gbps:.1f}",
                f"{row.pct_of_copy:.0f}%",
                *(_format_speedup(row.speedup_vs.get(variant)) for variant in TORCH_VARIANTS),
            ]
        )
    return format_table(_COLUMNS, table, right_aligned_from=_NUMERIC_FROM)


def _format_speedup(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_table(
    headers: Sequence[str], rows: Sequence[Optional[Sequence[str]]], right_aligned_from: int
) -> str:
    """Plain-text columns; a None row prints as a blank line."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row or ()):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if index >= right_aligned_from else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers)] + [line(row) if row else "" for row in rows])


def to_json_document(
    result: BenchResult, config: BenchConfig, environment: Mapping, settings: Mapping
) -> Dict[str, object]:
    """Every number of the run, with what it was measured on."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "environment": dict(environment),
        "settings": dict(settings, steps=config.steps, warmup=config.warmup),
        "copy_bandwidth": dataclasses.asdict(result.copy),
        "traffic": traffic_entries(config),
        "workloads": [
            {"name": workload.name, "description": workload.description,
             "num_tensors": workload.num_tensors, "numel": workload.numel}
            for workload in config.workloads
        ],
        "results": [dataclasses.asdict(row) for row in result.rows],
        "skipped": [dataclasses.asdict(item) for item in result.skipped],
    }


def write_json(path: str, document: Mapping) -> None:
    with open(path, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")


# ----------------------------------------------------------------------------- plot
MISSING_MATPLOTLIB = "--plot needs matplotlib, which is not installed: pip install matplotlib"
_BAR_SPAN = 0.8  # fraction of a group's width taken by its bars


def check_matplotlib() -> None:
    """Raise ImportError with an install hint, before a long run rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(MISSING_MATPLOTLIB) from error


def plot_bandwidth(result: BenchResult, path: str, title: str) -> None:
    """One panel per shape and dtype: achieved GB/s per optimizer (groups) and
    implementation (bars), with the measured copy bandwidth as a dashed line.

    The host-overhead shape is left out: its bytes are too few for GB/s to mean anything.
    """
    check_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.patches import Patch

    panels = _panels(result.rows)
    implementations = list(dict.fromkeys(row.implementation for row in result.rows))
    colors = {name: f"C{index % 10}" for index, name in enumerate(implementations)}
    columns = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(8 * columns, 4.5 * rows), layout="constrained")
    figure.suptitle(title)
    for index, ((shape, dtype), panel_rows) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw_panel(axes, panel_rows, colors, result.copy.gbps)
        axes.set_title(f"{shape}, {dtype}")
    handles = [Patch(color=colors[name], label=name) for name in implementations]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)))
    figure.savefig(path, dpi=100)


def _panels(rows: List[Row]) -> Dict[Tuple[str, str], List[Row]]:
    panels: Dict[Tuple[str, str], List[Row]] = {}
    for row in rows:
        if row.shape != "host-overhead":
            panels.setdefault((row.shape, row.dtype), []).append(row)
    return panels


def _draw_panel(axes, rows: List[Row], colors: Dict[str, str], copy_gbps: float) -> None:
    groups = list(dict.fromkeys(row.optimizer for row in rows))
    for group_index, group in enumerate(groups):
        group_rows = [row for row in rows if row.optimizer == group]
        width = _BAR_SPAN / len(group_rows)
        for bar_index, row in enumerate(group_rows):
            x = group_index - _BAR_SPAN / 2 + (bar_index + 0.5) * width
            axes.bar(x, row.gbps, width=width, color=colors[row.implementation])
    axes.axhline(copy_gbps, color="black", linestyle="--", linewidth=1,
                 label=f"copy {copy_gbps:.0f} GB/s")
    axes.set_xticks(range(len(groups)), groups, fontsize=9)
    axes.set_ylabel("achieved GB/s")
    axes.legend(loc="upper right", fontsize=8)


# ----------------------------------------------------------------------------- progress
class Progress:
    """Called once per unit of work: prints '[3/40, 12 s] large float32 Adam(...)'.

    On a terminal each message overwrites the previous one; in a log file
    each gets its own line.
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self.interactive = self.stream.isatty()

    def __call__(self, message: str) -> None:
        self.count += 1
        elapsed = time.perf_counter() - self.start
        text = f"[{self.count}/{self.total}, {elapsed:.0f} s] {message}"
        if self.interactive:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        prefix = "\r\033[K" if self.interactive else ""
        self.stream.write(f"{prefix}done in {elapsed:.0f} s\n")
        self.stream.flush()
