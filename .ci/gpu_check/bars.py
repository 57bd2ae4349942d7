"""The GPU bars, evaluated on the JSON that `python -m fusedopt.bench --json` writes.

Each bar compares rows timed in the same run. A bar whose rows are missing (the bench was
cut by the budget, or a contender could not run) is reported as not measured, never as
passed.
"""
from typing import Callable, Dict, Iterable, List, Mapping, Optional

MIN_COPY_BAR_BYTES = 256 * 2**20  # bar 1 counts shapes with at least this many fp32 param bytes
ADAM_FAMILY = ("adam", "adamw")
CUDA, TRITON, TORCH_FUSED = "fusedopt[cuda]", "fusedopt[triton]", "fused"

BAR_TEXT = {
    "adam_fp32_copy_fraction": (
        "fp32 Adam, backend cuda: achieved bandwidth (28 B/element) / device-to-device copy bandwidth measured"
        " in the same run, on every timed shape with >= 256 MiB of params (the worst shape counts)", ">=", 0.90),
    "cuda_vs_torch_fused_gpt2_xl": (
        "fusedopt cuda step time / torch.optim Adam and AdamW (fused=True), GPT-2 XL shapes, fp32 (the worse"
        " of the two counts)", "<=", 0.90),
    "cuda_vs_torch_fused_10000x4096": (
        "fusedopt cuda step time / torch.optim Adam and AdamW (fused=True), 10,000 tensors of 4,096 elements,"
        " fp32 (the worse of the two counts)", "<=", 0.75),
    "triton_vs_cuda": (
        "fusedopt triton step time / fusedopt cuda step time, Adam and AdamW, fp32, shapes with >= 256 MiB of"
        " params (the worst counts)", "<=", 1.15),
}


def _rows(document: Mapping, **where) -> List[Mapping]:
    return [row for row in document.get("results", []) if all(row.get(k) == v for k, v in where.items())]


def _big(row: Mapping) -> bool:
    return row["numel"] * 4 >= MIN_COPY_BAR_BYTES


def _bar(key: str, details: List[Dict[str, object]]) -> Dict[str, object]:
    text, comparison, limit = BAR_TEXT[key]
    if not details:
        return {"bar": key, "description": text, "measured": None, "limit": limit, "comparison": comparison,
                "pass": None, "details": "not measured: the bench JSON has no rows for it"}
    pick: Callable[[Iterable[float]], float] = min if comparison == ">=" else max
    measured = pick(detail["value"] for detail in details)
    passed = measured >= limit if comparison == ">=" else measured <= limit
    return {"bar": key, "description": text, "measured": round(measured, 4), "limit": limit,
            "comparison": comparison, "pass": passed, "details": details}


def evaluate(document: Optional[Mapping]) -> List[Dict[str, object]]:
    """Every bar of BAR_TEXT, measured on `document` (None: the bench did not run)."""
    document = document or {}
    copy = document.get("copy_bandwidth", {}).get("gbps")
    bars = []

    details = [{"shape": row["shape"], "value": row["pct_of_copy"] / 100, "gbps": row["gbps"], "copy_gbps": copy,
                "median_ms": row["median_ms"]}
               for row in _rows(document, optimizer="adam", dtype="float32", implementation=CUDA) if _big(row)]
    bars.append(_bar("adam_fp32_copy_fraction", details))

    for key, shape in (("cuda_vs_torch_fused_gpt2_xl", "gpt2-xl"), ("cuda_vs_torch_fused_10000x4096", "many-4096")):
        details = []
        for optimizer in ADAM_FAMILY:
            for row in _rows(document, shape=shape, optimizer=optimizer, dtype="float32", implementation=CUDA):
                speedup = row.get("speedup_vs", {}).get(TORCH_FUSED)
                if speedup:
                    details.append({"optimizer": optimizer, "value": 1 / speedup, "median_ms": row["median_ms"]})
        bars.append(_bar(key, details))

    details = []
    for cuda in _rows(document, dtype="float32", implementation=CUDA):
        if cuda["optimizer"] not in ADAM_FAMILY or not _big(cuda):
            continue
        for triton in _rows(document, shape=cuda["shape"], dtype="float32", optimizer=cuda["optimizer"],
                            implementation=TRITON):
            details.append({"shape": cuda["shape"], "optimizer": cuda["optimizer"],
                            "value": triton["median_ms"] / cuda["median_ms"],
                            "triton_ms": triton["median_ms"], "cuda_ms": cuda["median_ms"]})
    bars.append(_bar("triton_vs_cuda", details))
    return bars
