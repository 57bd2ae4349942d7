"""Bandwidth bar charts (PNG) of a BenchResult; needs matplotlib."""
import math
from typing import Dict, List, Tuple

from .runner import BenchResult, Row

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
