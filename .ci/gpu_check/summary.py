"""What the GPU check records: the machine and software it ran on, the overall verdict,
and the output folder's limits (what the device tool brings back)."""
import hashlib
import json
import os
import subprocess
from typing import Dict, List, Mapping, Optional

MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
OUTPUT_FILES = ("summary.json", "run.log", "tests.log", "junit.xml", "sanitizer.log", "bench.json", "bench.png",
                "train_gpt.txt")

# Run by the GPU machine's Python; prints one JSON object.
PROBE_SCRIPT = r"""
import importlib, json, platform, sys
facts = {"python": platform.python_version(), "python_executable": sys.executable}
for name in ("torch", "triton", "numpy", "setuptools", "pybind11", "pytest", "xdist", "pytest_timeout",
             "matplotlib", "cmake", "ninja"):
    try:
        module = importlib.import_module(name)
        facts[name] = str(getattr(module, "__version__", "present"))
    except Exception as error:
        facts[name] = None
try:
    import torch
    facts["torch_cuda"] = torch.version.cuda
    facts["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts["device_name"] = properties.name
        facts["capability"] = "%d%d" % (properties.major, properties.minor)
        facts["device_memory_gib"] = round(properties.total_memory / 2**30, 1)
        facts["multiprocessors"] = properties.multi_processor_count
        facts["device_count"] = torch.cuda.device_count()
except Exception as error:
    facts["torch_error"] = repr(error)
print(json.dumps(facts))
"""


def command_output(command: List[str], cwd: Optional[str] = None, timeout: float = 30) -> Optional[str]:
    try:
        run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def git_facts(root: str, commit: Optional[str], commit_date: Optional[str]) -> Dict[str, Optional[str]]:
    """The checkout's commit and date: from git where the checkout has its history, else
    from --commit/--commit-date (the device tool sends a working tree without .git)."""
    head = command_output(["git", "rev-parse", "HEAD"], cwd=root)
    if head:
        status = command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
        return {"commit": head, "commit_date": command_output(["git", "show", "-s", "--format=%cI", "HEAD"], cwd=root),
                "source": "git", "uncommitted_changes": bool(status)}
    return {"commit": commit or "unknown", "commit_date": commit_date or "unknown",
            "source": "--commit" if commit else "none (no .git and no --commit)", "uncommitted_changes": None}


def source_digest(root: str) -> str:
    """sha256 over the files that make the package and its tests (paths and contents), so a
    result can be matched to a tree even without git."""
    digest = hashlib.sha256()
    for top in ("fusedopt", "csrc", "tests", "examples", "setup.py", "CMakeLists.txt", "pyproject.toml"):
        path = os.path.join(root, top)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(folder, name) for folder, dirs, names in os.walk(path) for name in names
            if not name.endswith((".so", ".pyc", ".o")) and "__pycache__" not in folder)
        for file in sorted(files):
            digest.update(os.path.relpath(file, root).encode() + b"\0")
            with open(file, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def nvidia_smi() -> Dict[str, Optional[str]]:
    line = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                           "--format=csv,noheader"])
    if not line:
        return {"nvidia_smi": None}
    fields = [field.strip() for field in line.splitlines()[0].split(",")]
    keys = ("name", "driver", "memory", "max_sm_clock")
    return {f"nvidia_smi_{key}": value for key, value in zip(keys, fields)}


def overall(summary: Mapping) -> Dict[str, object]:
    """correctness: build, guard, tests, sanitizers; bars: the four GPU bars. Exit status 0
    when both pass, 1 when correctness fails, 2 when only bars fail or were not measured."""
    parts = summary.get("parts", {})
    failures = [f"{name}: {part.get('status')}" for name, part in parts.items()
                if part.get("status") in ("fail", "error")]
    bars = summary.get("bars", [])
    bars_failed = [bar["bar"] for bar in bars if bar.get("pass") is False]
    bars_unmeasured = [bar["bar"] for bar in bars if bar.get("pass") is None]
    correct = not failures
    status = "pass" if correct and not bars_failed and not bars_unmeasured and bars else (
        "fail" if not correct else "bars not met")
    return {"status": status, "exit_code": 0 if status == "pass" else 1 if not correct else 2,
            "correctness_failures": failures, "bars_failed": bars_failed, "bars_not_measured": bars_unmeasured}


def write_json(path: str, document: Mapping) -> None:
    with open(path, "w") as file:
        json.dump(document, file, indent=2, default=str)
        file.write("\n")


def enforce_output_limits(out_dir: str) -> List[str]:
    """Keep the folder within what comes back: at most MAX_FILES plain files, none over
    MAX_FILE_BYTES (a larger one keeps its head and tail), no subfolders. Returns notes."""
    notes = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path) or os.path.islink(path):
            notes.append(f"{name}: not a plain file; it will not come back")
            continue
        if name not in OUTPUT_FILES:
            notes.append(f"{name}: not one of the check's files")
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            keep = MAX_FILE_BYTES // 2 - 1024
            with open(path, "rb") as file:
                head = file.read(keep)
                file.seek(size - keep)
                tail = file.read()
            with open(path, "wb") as file:
                file.write(head + f"\n[... {size - 2 * keep} bytes cut by .ci/gpu ...]\n".encode() + tail)
            notes.append(f"{name}: {size} bytes, cut to {os.path.getsize(path)}")
    count = len(os.listdir(out_dir))
    if count > MAX_FILES:
        notes.append(f"{count} entries in the output folder, more than the {MAX_FILES} that come back")
    return notes
