"""Turning a BenchResult into a terminal table and a JSON document."""
import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Sequence

from .contenders import TORCH_VARIANTS
from .runner import BenchConfig, BenchResult, Row, dtype_name
from .traffic import uses_master

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
                entries.append(
                    {"optimizer": case.key, "optimizer_label": case.label + (" master_weights" if master else ""),
                     "dtype": dtype_name(dtype), "bytes_per_element": case.traffic.bytes_per_element(dtype, master),
                     "formula": case.traffic.formula(dtype, master), "master_weights": master})
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
