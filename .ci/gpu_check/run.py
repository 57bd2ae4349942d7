"""`.ci/gpu OUT_DIR`: the whole GPU check, part by part, inside one time budget.

Parts run in plan.PARTS order; before each, the plan is made again from the time left, so
an overrun only takes time from the parts after it, lowest priority first. Every part's
outcome goes into OUT_DIR/summary.json, which is written even when a part crashes.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from . import bars as bar_rules
from . import junit, plan as planning, sanitizer, summary as recording

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_TESTS = ["tests", "-m", "cuda or triton"]
GUARD_PLUGIN = ["-p", "gpu_check.pytest_gpu_guard", "-p", "no:cacheprovider"]
CUDA_TESTS = "tests/test_cuda.py"
# Left out under the sanitizers: a 17 GiB tensor (hours of instrumented loads), and the
# profiler (CUPTI), which cannot run beside compute-sanitizer.
SANITIZER_EXCLUDED = ("test_float16_tensor_over_two_to_the_31_elements", "test_launch_count_matches_the_plan")
GRID_TEST = "test_matches_torch_optim"  # 320 cases: last under memcheck, left out of its subset
SANITIZER_ERROR_EXIT = 86
MANDATORY_FLOOR_S = 30  # the default budget leaves 120 s of a 10-minute call unused

BENCH_COMMON = ["--device", "cuda", "--optimizers", "adam,adamw", "--backend", "cuda,triton",
                "--shapes", "large,gpt2-xl,many-4096"]
BENCH_LEVELS = {
    "full": ["--dtypes", "float32,bfloat16", "--master-weights", "--torch-variants", "foreach,fused",
             "--warmup", "5", "--steps", "40"],
    "reduced": ["--dtypes", "float32", "--torch-variants", "fused", "--warmup", "3", "--steps", "20"],
    "minimal": ["--dtypes", "float32", "--torch-variants", "fused", "--warmup", "2", "--steps", "10"],
}
TRAIN_GPT_COMMON = ["--device", "cuda", "--dtype", "bfloat16", "--master-weights", "--max-grad-norm", "1.0",
                    "--grad-scaler", "--compare", "--reference-fp32", "--n-head", "16", "--n-embd", "1024",
                    "--block-size", "256", "--batch-size", "8", "--lr", "3e-4"]
TRAIN_GPT_LEVELS = {"full": ["--n-layer", "24", "--steps", "50"], "reduced": ["--n-layer", "12", "--steps", "20"]}


@dataclass
class Finished:
    returncode: Optional[int]
    timed_out: bool
    seconds: float
    output: str


def bench_arguments(level: str, out_dir: str, plot: bool) -> List[str]:
    arguments = BENCH_COMMON + BENCH_LEVELS[level] + ["--json", os.path.join(out_dir, "bench.json")]
    return arguments + (["--plot", os.path.join(out_dir, "bench.png")] if plot else [])


def train_gpt_arguments(level: str) -> List[str]:
    return TRAIN_GPT_COMMON + TRAIN_GPT_LEVELS[level]


def sanitizer_order(collected: Sequence[str], level: str) -> List[str]:
    """test_cuda.py's node ids for memcheck: every test function but the excluded ones,
    the 320-case grid last (full) or not at all (subset)."""
    groups = junit.nodeids_of_function(collected, CUDA_TESTS)
    first = [nodeid for name, ids in groups.items() if name not in SANITIZER_EXCLUDED + (GRID_TEST,) for nodeid in ids]
    return first + (groups.get(GRID_TEST, []) if level == "full" else [])


def representative_tests(collected: Sequence[str]) -> List[str]:
    """Three optimizer-only tests for racecheck and initcheck: over a thousand tensors in
    several launches, bf16 params with fp32 master rows, and centered RMSprop with momentum
    (the most state rows)."""
    groups = junit.nodeids_of_function(collected, CUDA_TESTS)

    def pick(function: str, *words: str) -> List[str]:
        ids = groups.get(function, [])
        return [next((i for i in ids if all(w in i for w in words)), ids[0])] if ids else []

    return (pick("test_over_a_thousand_tensors_in_one_bucket")
            + pick("test_master_weights_match_the_reference_backend", "bfloat16")
            + pick(GRID_TEST, "RMSprop", "centered", "momentum=0.9", "float32"))


def parse_train_gpt(text: str) -> Dict[str, object]:
    """The figures examples/train_gpt.py --compare --reference-fp32 prints at its end."""
    figures: Dict[str, object] = {}
    match = re.search(r"fusedopt takes ([\d.]+)x the time", text)
    if match:
        figures["fusedopt_over_torch_fused_optimizer_time"] = float(match.group(1))
    match = re.search(r"max \|loss difference\| over (\d+) steps: ([\d.e+-]+)", text)
    if match:
        figures["steps"] = int(match.group(1))
        figures["max_loss_difference"] = float(match.group(2))
    for name in ("torch-fused", "fusedopt"):
        match = re.search(rf"{name} vs the fp32 run: max \|loss - fp32 loss\| ([\d.e+-]+), mean ([\d.e+-]+)", text)
        if match:
            figures[f"{name}_vs_fp32_max"] = float(match.group(1))
            figures[f"{name}_vs_fp32_mean"] = float(match.group(2))
        match = re.search(rf"^{name}: median forward\+backward ([\d.]+) ms, optimizer step ([\d.]+) ms", text, re.M)
        if match:
            figures[f"{name}_optimizer_step_ms"] = float(match.group(2))
    if "fusedopt_vs_fp32_mean" in figures and "torch-fused_vs_fp32_mean" in figures:
        figures["fusedopt_closer_to_fp32"] = figures["fusedopt_vs_fp32_mean"] < figures["torch-fused_vs_fp32_mean"]
    return figures


class GpuCheck:
    def __init__(self, options: argparse.Namespace):
        self.options = options
        self.out = os.path.abspath(options.out_dir)
        self.python = options.python
        self.started = time.monotonic()
        self.tmp = tempfile.mkdtemp(prefix="fusedopt-gpu-check-")
        self.collected: List[str] = []
        self.facts: Dict[str, object] = {}
        self.summary: Dict[str, object] = {
            "check": ".ci/gpu", "command": " ".join([".ci/gpu"] + sys.argv[1:]),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": options.budget_s, "parts": {}, "bars": [], "allowed_skip_reasons": [
                {"pattern": pattern, "why": why} for pattern, why in junit.ALLOWED_SKIPS]}
        os.makedirs(self.out, exist_ok=True)
        self.run_log = open(os.path.join(self.out, "run.log"), "a")

    # ----------------------------------------------------------------------------- plumbing
    def say(self, message: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f} s]"
        for line in message.splitlines() or [""]:
            print(f"{stamp} {line}", flush=True)
            self.run_log.write(f"{stamp} {line}\n")
        self.run_log.flush()

    def remaining(self) -> float:
        return self.options.budget_s - (time.monotonic() - self.started)

    def environment(self, **extra: str) -> Dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
        # The checkout first (every part imports the package built in it, with or without
        # pip's editable install), then .ci for the pytest guard.
        environment.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, ".ci")]),
                           FUSEDOPT_GPU_CHECK="1",
                           FUSEDOPT_GPU_CHECK_ROOT=ROOT, PYTHONDONTWRITEBYTECODE="1")
        environment.update(extra)
        return environment

    def execute(self, command: Sequence[str], log_name: str, timeout_s: float,
                environment: Optional[Dict[str, str]] = None) -> Finished:
        """Run `command` in the checkout, its output appended to OUT/log_name; on timeout
        interrupt it (pytest then reports what it has), then end it, and its children."""
        path = os.path.join(self.out, log_name)
        with open(path, "a") as log:
            log.write(f"\n$ {' '.join(command)}   (time allowed: {timeout_s:.0f} s)\n")
            log.flush()
            start = time.monotonic()
            process = subprocess.Popen(list(command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment or self.environment(), start_new_session=True)
            timed_out = False
            try:
                process.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        process.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            seconds = time.monotonic() - start
            log.write(f"# exit status {process.returncode}{' (stopped: time allowed ran out)' if timed_out else ''}"
                      f" after {seconds:.1f} s\n")
        with open(path, errors="replace") as log:
            log.seek(max(0, os.path.getsize(path) - 2_000_000))
            output = log.read()
        return Finished(process.returncode, timed_out, seconds, output[output.rfind(f"$ {command[0]}"):])

    def tail(self, text: str, lines: int = 25) -> str:
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------------------- driver
    def run(self) -> int:
        self.say("\n".join(planning.make_plan(self.options.budget_s).lines()))
        for part in planning.PARTS:
            if part.name == "finish":
                break
            names = [part.name, *planning.parts_after(part.name)]
            now = planning.make_plan(self.remaining(), names)
            level = now.chosen[part.name]
            if level is None:
                self.record(part.name, {"status": "dropped", "why": f"budget: {self.remaining():.0f} s left"})
                self.say(f"== {part.name}: dropped, {self.remaining():.0f} s left")
                continue
            if self.summary["parts"].get("probe", {}).get("status") == "fail":
                self.record(part.name, {"status": "not run", "why": "the probe found no usable GPU"})
                continue
            later = planning.make_plan(self.remaining() - level.seconds, planning.parts_after(part.name))
            allowed = planning.allowed_seconds(part, level, self.remaining(), later)
            if part.mandatory:  # past the budget a mandatory part still gets a try (the call has slack)
                allowed = max(allowed, MANDATORY_FLOOR_S)
            self.say(f"== {part.name} [{level.name}]: expected {level.seconds:.0f} s, allowed {allowed:.0f} s,"
                     f" {self.remaining():.0f} s left")
            start = time.monotonic()
            try:
                outcome = getattr(self, "part_" + part.name)(level.name, allowed)
            except Exception:  # a crash of the check itself is recorded, never lost
                outcome = {"status": "error", "traceback": traceback.format_exc()}
            outcome.update(level=level.name, seconds=round(time.monotonic() - start, 1),
                           expected_s=level.seconds)
            self.record(part.name, outcome)
            self.say(f"   {part.name}: {outcome['status']} in {outcome['seconds']:.0f} s")
        return self.finish()

    def record(self, name: str, outcome: Dict[str, object]) -> None:
        """Keep a part's outcome, and summary.json up to date: if the call is stopped before
        the end, what ran is still on record."""
        self.summary["parts"][name] = outcome
        self.summary["overall"] = {"status": "unfinished: the check stopped before its end"}
        recording.write_json(os.path.join(self.out, "summary.json"), self.summary)

    # ----------------------------------------------------------------------------- parts
    def part_probe(self, level: str, allowed: float) -> Dict[str, object]:
        run = subprocess.run([self.python, "-c", recording.PROBE_SCRIPT], cwd=self.tmp, capture_output=True,
                             text=True, timeout=max(10, allowed), env=self.environment())
        self.facts = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else {}
        nvcc = recording.command_output(["nvcc", "--version"])
        tool = shutil.which("compute-sanitizer") or next(
            (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
        tool_version = (recording.command_output([tool, "--version"]) or "").splitlines() if tool else []
        environment = {
            **self.facts, **recording.nvidia_smi(),
            "nvcc": nvcc.splitlines()[-1] if nvcc else None,
            "compute_sanitizer": tool,
            "compute_sanitizer_version": tool_version[-1] if tool_version else None,
            "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **{f"fusedopt_{k}": v for k, v in recording.git_facts(ROOT, self.options.commit,
                                                                   self.options.commit_date).items()},
            "fusedopt_source_sha256": recording.source_digest(ROOT),
        }
        self.summary["environment"] = environment
        self.say(json.dumps(environment, indent=1))
        if not self.facts.get("cuda_available"):
            return {"status": "fail", "why": "torch sees no CUDA GPU", "stderr": run.stderr[-2000:]}
        return {"status": "pass"}

    def part_build(self, level: str, allowed: float) -> Dict[str, object]:
        if self.options.skip_build:
            return {"status": "skipped", "why": "--skip-build: using the fusedopt._C already built in the checkout"}
        capability = self.facts.get("capability")
        archs = None if self.options.all_archs or not capability else f"{capability}-real"
        jobs = str(os.cpu_count() or 4)
        extra = {"MAX_JOBS": jobs, "CMAKE_BUILD_PARALLEL_LEVEL": jobs}
        if archs:
            extra["FUSEDOPT_CUDA_ARCHS"] = archs
        environment = self.environment(**extra)
        command = [self.python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps",
                   "--no-cache-dir", "-v", "-e", "."]
        pip = self.execute(command, "run.log", allowed, environment)
        outcome: Dict[str, object] = {"command": " ".join(command), "cuda_archs": archs or "default",
                                      "pip_seconds": round(pip.seconds, 1)}
        if pip.returncode == 0:
            return {**outcome, "status": "pass", "method": "pip install -e"}
        self.say("!! pip install --no-build-isolation -e . FAILED; building in place instead so that the tests"
                 " still run. The check fails.\n" + self.tail(pip.output))
        fallback = self.execute([self.python, "setup.py", "build_ext", "--inplace"], "run.log",
                                max(30.0, allowed - pip.seconds), environment)
        return {**outcome, "status": "fail", "method": "setup.py build_ext --inplace (after pip failed)",
                "why": "pip install --no-build-isolation -e . failed", "fallback_returncode": fallback.returncode,
                "pip_tail": self.tail(pip.output, 15)}

    def part_guard(self, level: str, allowed: float) -> Dict[str, object]:
        code = ("import json, sys; from gpu_check.pytest_gpu_guard import guard_facts;"
                f" print(json.dumps(guard_facts({ROOT!r})))")
        run = subprocess.run([self.python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=max(10, allowed), env=self.environment())
        info = subprocess.run([self.python, "-m", "fusedopt"], cwd=ROOT, capture_output=True, text=True,
                              timeout=max(10, allowed), env=self.environment())
        self.say("python -m fusedopt:\n" + info.stdout + info.stderr[-2000:])
        if run.returncode != 0:
            self.say("!! GPU GUARD FAILED: the tests cannot be trusted to run fusedopt's CUDA kernels\n"
                     + self.tail(run.stderr, 8))
            return {"status": "fail", "why": self.tail(run.stderr, 3)}
        return {"status": "pass", "facts": json.loads(run.stdout.strip().splitlines()[-1])}

    def part_tests(self, level: str, allowed: float) -> Dict[str, object]:
        collected_path = os.path.join(self.tmp, "collected.txt")
        collect = self.execute([self.python, "-m", "pytest", *GPU_TESTS, "--collect-only", "-q", *GUARD_PLUGIN],
                               "tests.log", min(120.0, allowed / 3),
                               self.environment(FUSEDOPT_GPU_CHECK_COLLECTED=collected_path))
        if os.path.exists(collected_path):
            with open(collected_path) as file:
                self.collected = [line.strip() for line in file if line.strip()]
        junit_path = os.path.join(self.out, "junit.xml")
        command = [self.python, "-m", "pytest", *GPU_TESTS, *GUARD_PLUGIN, "-rfEsx", "--durations=20",
                   f"--junitxml={junit_path}"]
        workers = min(8, max(1, (os.cpu_count() or 2) // 2))
        if self.facts.get("xdist") and workers > 1:
            command += ["-n", str(workers)]
        if self.facts.get("pytest_timeout"):
            command += ["--timeout", "300"]
        tests = self.execute(command, "tests.log", max(1.0, allowed - collect.seconds))
        run = None
        if os.path.exists(junit_path):
            with open(junit_path) as file:
                run = junit.parse(file.read())
        result = junit.verdict(run, self.collected, ROOT)
        self.summary["tests"] = {**result, "command": " ".join(command), "returncode": tests.returncode,
                                 "timed_out": tests.timed_out, "collect_returncode": collect.returncode}
        if not result["passed"]:
            self.say("!! GPU TESTS FAILED:\n  " + "\n  ".join(result["reasons"]) + "\n"
                     + "\n".join(result["problems"][:20]) + "\n" + self.tail(tests.output, 15))
        counts = result["counts"]
        self.say(f"   tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors,"
                 f" {counts['skipped_allowed']} skipped (allowed), {counts['skipped_not_allowed']} skipped"
                 f" (not allowed), of {counts['collected']} collected")
        return {"status": "pass" if result["passed"] and tests.returncode == 0 else "fail", "counts": counts}

    def part_bench(self, level: str, allowed: float) -> Dict[str, object]:
        path = os.path.join(self.out, "bench.json")
        if os.path.exists(path):
            os.remove(path)
        arguments = bench_arguments(level, self.out, plot=bool(self.facts.get("matplotlib")))
        bench = self.execute([self.python, "-m", "fusedopt.bench", *arguments], "run.log", allowed)
        document = None
        if os.path.exists(path):
            with open(path) as file:
                document = json.load(file)
        self.summary["bars"] = bar_rules.evaluate(document)
        self.summary["bench"] = {"command": "python -m fusedopt.bench " + " ".join(arguments),
                                 "copy_bandwidth_gbps": (document or {}).get("copy_bandwidth", {}).get("gbps"),
                                 "skipped_contenders": (document or {}).get("skipped", [])}
        if bench.timed_out:
            return {"status": "cut", "why": "stopped at its time limit: no bench JSON"}
        if bench.returncode != 0 or document is None:
            self.say("!! BENCH FAILED\n" + self.tail(bench.output))
            return {"status": "fail", "returncode": bench.returncode}
        return {"status": "pass"}

    def _sanitize(self, tool: str, nodeids: Sequence[str], allowed: float) -> Dict[str, object]:
        executable = self.summary.get("environment", {}).get("compute_sanitizer")
        if not executable:
            return {"status": "skipped", "why": "compute-sanitizer is not installed"}
        if not nodeids:
            nodeids = [CUDA_TESTS, "-k", " and ".join(f"not {name}" for name in SANITIZER_EXCLUDED)]
        command = [executable, "--tool", tool, "--error-exitcode", str(SANITIZER_ERROR_EXIT), "--print-limit", "20",
                   self.python, "-m", "pytest", *GUARD_PLUGIN, "-v", "-rfE", *nodeids]
        # Each tensor its own cudaMalloc, so a read or write past its end leaves the allocation.
        run = self.execute(command, "sanitizer.log", allowed,
                           self.environment(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        report = sanitizer.read(run.output)
        outcome = {**report, "tool": tool, "tests_asked": len([n for n in nodeids if "::" in n]) or "file",
                   "returncode": run.returncode, "timed_out": run.timed_out, "seconds": round(run.seconds, 1)}
        if report["errors"] or run.returncode == SANITIZER_ERROR_EXIT:
            self.say(f"!! {tool} REPORTED ERRORS:\n" + "\n".join(report["first_errors"]))
            return {**outcome, "status": "fail"}
        if report["unsupported"]:
            return {**outcome, "status": "skipped", "why": "compute-sanitizer cannot run on this machine"}
        if run.timed_out:
            return {**outcome, "status": "partial", "why": f"time-boxed: {report['tests_finished']} tests checked"}
        if not report["tests_finished"]:
            return {**outcome, "status": "incomplete", "why": "pytest ran no test under the sanitizer",
                    "tail": self.tail(run.output, 10)}
        return {**outcome, "status": "pass"}

    def part_memcheck(self, level: str, allowed: float) -> Dict[str, object]:
        return self._sanitize("memcheck", sanitizer_order(self.collected, level), allowed)

    def part_racecheck_initcheck(self, level: str, allowed: float) -> Dict[str, object]:
        tests = representative_tests(self.collected)
        race = self._sanitize("racecheck", tests, allowed / 2)
        init = self._sanitize("initcheck", tests, max(1.0, allowed - race.get("seconds", allowed / 2)))
        statuses = [race["status"], init["status"]]
        status = next((s for s in ("fail", "partial", "incomplete", "skipped") if s in statuses), "pass")
        return {"status": status, "racecheck": race, "initcheck": init, "tests": tests}

    def part_train_gpt(self, level: str, allowed: float) -> Dict[str, object]:
        arguments = train_gpt_arguments(level)
        run = self.execute([self.python, "examples/train_gpt.py", *arguments], "train_gpt.txt", allowed)
        figures = parse_train_gpt(run.output)
        self.summary["train_gpt"] = {"command": "python examples/train_gpt.py " + " ".join(arguments), **figures}
        if run.timed_out:
            return {"status": "cut", "why": "stopped at its time limit"}
        if run.returncode != 0:
            self.say("!! train_gpt.py FAILED\n" + self.tail(run.output))
            return {"status": "fail", "returncode": run.returncode}
        return {"status": "pass", **figures}

    # ----------------------------------------------------------------------------- finish
    def finish(self) -> int:
        self.summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.summary["overall"] = recording.overall(self.summary)
        self.summary["parts"]["finish"] = {"status": "pass"}
        self.print_table()
        self.run_log.close()
        recording.write_json(os.path.join(self.out, "summary.json"), self.summary)
        notes = recording.enforce_output_limits(self.out)
        if notes:
            self.summary["output_notes"] = notes
            recording.write_json(os.path.join(self.out, "summary.json"), self.summary)
            print("output folder:", *notes, sep="\n  ")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return int(self.summary["overall"]["exit_code"])

    def print_table(self) -> None:
        overall = self.summary["overall"]
        lines = ["", "================ fusedopt GPU check ================"]
        environment = self.summary.get("environment", {})
        lines.append(f"device {environment.get('device_name')}, driver {environment.get('nvidia_smi_driver')},"
                     f" torch {environment.get('torch')} (CUDA {environment.get('torch_cuda')}),"
                     f" triton {environment.get('triton')}, commit {environment.get('fusedopt_commit')}")
        for name, part in self.summary["parts"].items():
            lines.append(f"  {name:<20} {part.get('status', '?'):<10} {part.get('seconds', '')}")
        counts = self.summary.get("tests", {}).get("counts")
        if counts:
            lines.append(f"  GPU tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors,"
                         f" {counts['skipped_allowed'] + counts['skipped_not_allowed']} skipped"
                         f" ({counts['skipped_not_allowed']} not allowed), {counts['collected']} collected")
        for bar in self.summary.get("bars", []):
            verdict = {True: "PASS", False: "FAIL", None: "not measured"}[bar["pass"]]
            lines.append(f"  bar {bar['bar']:<32} {bar['measured']!s:>8} {bar['comparison']} {bar['limit']:<5}"
                         f" {verdict}")
        gpt = self.summary.get("train_gpt", {})
        if "fusedopt_over_torch_fused_optimizer_time" in gpt:
            lines.append(f"  train_gpt: fusedopt optimizer time {gpt['fusedopt_over_torch_fused_optimizer_time']}x"
                         f" torch fused; closer to fp32: {gpt.get('fusedopt_closer_to_fp32')}")
        lines.append(f"STATUS {overall['status'].upper()} (exit {overall['exit_code']}) after"
                     f" {self.summary['elapsed_s']:.0f} s of a {self.options.budget_s:.0f} s budget")
        for reason in overall["correctness_failures"]:
            lines.append(f"  failed: {reason}")
        self.say("\n".join(lines))


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=".ci/gpu", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="folder for every output (at most 8 files); required unless"
                                                   " --dry-run")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds the whole check may take, build included (default 480, for a 10-minute call)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: check this script's own logic on synthetic inputs and print the plan")
    parser.add_argument("--skip-build", action="store_true", help="use the fusedopt._C already built in the checkout")
    parser.add_argument("--all-archs", action="store_true",
                        help="build the default CUDA architectures instead of only this GPU's (slower)")
    parser.add_argument("--python", default=sys.executable, help="the Python that has torch (default: this one)")
    parser.add_argument("--commit", help="the checkout's commit, where it has no .git (the device tool's copy)")
    parser.add_argument("--commit-date", help="that commit's date")
    options = parser.parse_args(argv)
    if not options.dry_run and not options.out_dir:
        parser.error("OUT_DIR is required (or --dry-run)")
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    if options.dry_run:
        from .dry_run import dry_run

        return dry_run(options)
    if os.path.isdir(options.out_dir) and os.listdir(options.out_dir):
        print(f".ci/gpu: {options.out_dir} is not empty; give an empty or new folder", file=sys.stderr)
        return 1
    return GpuCheck(options).run()
