"""`.ci/gpu --dry-run`: checks the GPU check's own logic on this machine (no GPU needed)
and prints the plan. Exit status 0 only if every self-check passes.

Each check feeds a piece of the check inputs whose verdict is known: synthetic junit XML
(including the false pass of a run that skipped the CUDA tests), pytest's real junit
output, a real bench JSON relabelled as a GPU run, real train_gpt.py output, synthetic
sanitizer logs, a summary written to an output folder, the budget arithmetic, and the
pytest guard on a machine without a GPU.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import traceback
from typing import Callable, Dict, List, Optional, Tuple

from . import bars as bar_rules
from . import junit, plan as planning, run as runner, sanitizer, summary as recording

ROOT = runner.ROOT


def _environment(**extra: str) -> Dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "FUSEDOPT_GPU_CHECK", "TRITON_INTERPRET")}
    environment.update(PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, ".ci")]), PYTHONDONTWRITEBYTECODE="1")
    environment.update(extra)
    return environment


def _pytest(arguments: List[str], cwd: str = ROOT, **extra: str) -> subprocess.CompletedProcess:
    # Outside the repository no test uses hypothesis, whose plugin costs seconds to load.
    quick = ["-p", "no:hypothesispytest"] if cwd != ROOT else []
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_check.pytest_gpu_guard", "-p",
                           "no:cacheprovider", *quick, *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=_environment(**extra))


# ----------------------------------------------------------------------------- plan
def check_plan() -> None:
    names = [part.name for part in planning.PARTS]
    default = planning.make_plan(480)
    assert default.fits and default.expected_s <= 480, default.lines()
    mandatory = [part.name for part in planning.PARTS if part.mandatory]
    for budget in (50, 200, 300, 400, 480, 600, 800, 2000):
        plan = planning.make_plan(budget)
        assert all(plan.chosen[name] is not None for name in mandatory), (budget, plan.dropped())
        assert list(plan.chosen) == names
        assert plan.fits or all(plan.chosen[n] is None for n in names if n not in mandatory), plan.lines()
    assert planning.make_plan(10_000).dropped() == []
    # Shrinking follows the ladder: the sanitizer subset goes first, then the bench's sizes.
    full = sum(part.levels[0].seconds for part in planning.PARTS)
    first = planning.make_plan(full - 1)
    assert first.dropped() == ["racecheck_initcheck"] and first.chosen["bench"].name == "full", first.lines()
    second = planning.make_plan(full - planning.PARTS_BY_NAME["racecheck_initcheck"].levels[0].seconds - 1)
    assert second.chosen["bench"].name == "reduced" and second.chosen["memcheck"].name == "full", second.lines()
    # Levels never grow as the budget shrinks.
    previous = None
    for budget in range(int(full) + 50, 0, -5):
        plan = planning.make_plan(budget)
        ranks = {name: (len(planning.PARTS_BY_NAME[name].levels) if level is None
                        else planning.PARTS_BY_NAME[name].levels.index(level)) for name, level in plan.chosen.items()}
        if previous:
            assert all(ranks[name] >= previous[name] for name in ranks), budget
        previous = ranks
    # Re-planning the remaining parts with the time left.
    rest = planning.make_plan(200, planning.parts_after("tests"))
    assert list(rest.chosen) == ["bench", "memcheck", "train_gpt", "racecheck_initcheck", "finish"]
    assert rest.fits
    # Time a part may take: a time-boxed part its estimate or the spare time; others all
    # but the later mandatory parts' time.
    memcheck = planning.PARTS_BY_NAME["memcheck"]
    later = planning.make_plan(100, ["train_gpt", "finish"])  # 45 + 5 expected
    assert planning.allowed_seconds(memcheck, memcheck.levels[0], 400, later) == 400 - 50
    assert planning.allowed_seconds(memcheck, memcheck.levels[0], 150, later) == 120
    bench = planning.PARTS_BY_NAME["bench"]
    assert planning.allowed_seconds(bench, bench.levels[0], 300, later) == 295


# ----------------------------------------------------------------------------- junit
COLLECTED = ["tests/test_cuda.py::test_cuda_backend_is_usable",
             "tests/test_cuda.py::test_matches_torch_optim[Adam-weight_decay=0.0-float32]",
             "tests/test_cuda.py::test_other_device_and_current_device_restored",
             "tests/test_triton.py::test_float32_matches_torch_and_reference[Adam]",
             "tests/test_triton.py::test_kernels_compile_for_h100",
             "tests/test_errors.py::test_grad_on_other_device_raises[cpu-Adam]"]


def _xml(cases: List[Tuple[str, str]], properties: Optional[Dict[str, str]] = None) -> str:
    """A junit document in pytest's layout; cases are (nodeid, outcome[:message])."""
    body = []
    for nodeid, outcome in cases:
        classname, name = junit.junit_key(nodeid)
        kind, _, message = outcome.partition(":")
        inner = "" if kind == "passed" else (
            f'<skipped type="pytest.skip" message="{message}">{nodeid.split("::")[0]}:1: {message}</skipped>'
            if kind == "skipped" else f'<{kind} message="{message}">trace</{kind}>')
        body.append(f'<testcase classname="{classname}" name="{name}" time="0.1">{inner}</testcase>')
    props = "".join(f'<property name="{k}" value="{v}"/>' for k, v in (properties or {}).items())
    return (f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="{len(cases)}">'
            f'<properties>{props}</properties>{"".join(body)}</testsuite></testsuites>')


def check_junit_verdicts() -> None:
    guard = {"fusedopt_gpu_guard": "ok", "fusedopt_c_file": ROOT + "/fusedopt/_C.cpython-312-x86_64-linux-gnu.so"}
    good = [(COLLECTED[0], "passed"), (COLLECTED[1], "passed"), (COLLECTED[2], "skipped:needs two GPUs"),
            (COLLECTED[3], "passed"), (COLLECTED[4], "skipped:with a GPU the tests above run the compiled kernels"),
            (COLLECTED[5], "passed")]

    def verdict(cases, properties=guard, collected=COLLECTED):
        return junit.verdict(junit.parse(_xml(cases, properties)), collected, ROOT)

    result = verdict(good)
    assert result["passed"], result["reasons"]
    assert result["counts"] == {"collected": 6, "in_xml": 6, "passed": 4, "failed": 0, "error": 0,
                                "skipped_allowed": 2, "skipped_not_allowed": 0}, result["counts"]
    # The false pass this check exists for: run from the repo root without _C, test_cuda.py
    # skips itself at importorskip, nothing of it is collected, pytest says "2 skipped", exit 0.
    false_pass = [("tests/test_cuda.py::tests.test_cuda", "skipped:could not import 'fusedopt._C'"),
                  ("tests/test_triton.py::tests.test_triton", "skipped:could not import 'triton'")]
    for collected in ([], COLLECTED):
        result = verdict(false_pass, {}, collected)
        assert not result["passed"] and result["counts"]["passed"] == 0, result
    assert not verdict(good, {})["passed"], "no guard properties must fail"
    assert not verdict(good, {**guard, "fusedopt_gpu_guard": "selftest"})["passed"]
    elsewhere = {**guard, "fusedopt_c_file": "/usr/lib/python3/site-packages/fusedopt/_C.so"}
    assert any("not from the checkout" in r for r in verdict(good, elsewhere)["reasons"])
    assert any("not in the XML" in r for r in verdict(good[:-1])["reasons"]), "fewer ran than collected must fail"
    disallowed = [good[0], (COLLECTED[1], "skipped:needs a CUDA GPU")] + good[2:]
    assert any("outside the allow-list" in r for r in verdict(disallowed)["reasons"])
    failed = [(COLLECTED[0], "failure:assert 1 == 2")] + good[1:]
    assert any("failed" in r for r in verdict(failed)["reasons"])
    errored = [(COLLECTED[0], "error:fixture")] + good[1:]
    assert not verdict(errored)["passed"]
    no_triton = [case for case in good if "test_triton" not in case[0]]
    assert any("tests/test_triton.py" in r for r in verdict(no_triton, collected=[c for c, _ in no_triton])["reasons"])
    assert not junit.verdict(None, COLLECTED, ROOT)["passed"], "no XML must fail"
    assert junit.junit_key("tests/sub/test_x.py::TestA::test_b[p-1]") == ("tests.sub.test_x.TestA", "test_b[p-1]")


def check_real_pytest_junit() -> None:
    """pytest's own junit XML, with the guard plugin's properties (selftest mode), reads as
    the synthetic documents above do; without a GPU the guard stops pytest (exit 3)."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        os.makedirs(os.path.join(folder, "tests"))
        with open(os.path.join(folder, "tests", "test_sample.py"), "w") as file:
            file.write(textwrap.dedent("""
                import pytest
                def test_passes(): pass
                @pytest.mark.skipif(True, reason="needs two GPUs")
                def test_two_gpus(): pass
                @pytest.mark.parametrize("x", [1, 2])
                def test_skips_at_run_time(x): pytest.skip("needs a CUDA GPU")
                def test_fails(): assert 1 == 2
            """))
        path = os.path.join(folder, "junit.xml")
        collected = os.path.join(folder, "collected.txt")
        _pytest(["tests", "--collect-only", "-q"], cwd=folder, FUSEDOPT_GPU_CHECK_COLLECTED=collected)
        _pytest(["tests", f"--junitxml={path}", "-q"], cwd=folder, FUSEDOPT_GPU_CHECK="selftest")
        with open(path) as file:
            run = junit.parse(file.read())
        with open(collected) as file:
            ids = [line.strip() for line in file if line.strip()]
        if not torch.cuda.is_available():  # the guard itself: no GPU, so pytest must stop before any test
            refused = _pytest(["tests", "-q"], cwd=folder, FUSEDOPT_GPU_CHECK="1", FUSEDOPT_GPU_CHECK_ROOT=folder)
            assert refused.returncode == 3 and "GPU guard: torch sees no CUDA GPU" in refused.stdout + refused.stderr, (
                refused.returncode, refused.stdout[-1000:], refused.stderr[-1000:])
    assert len(ids) == 5 and all(junit.junit_key(i) in {c.key for c in run.cases} for i in ids), (ids, run.cases)
    outcomes = {case.name: (case.outcome, case.message) for case in run.cases}
    assert outcomes["test_passes"] == ("passed", "")
    assert outcomes["test_two_gpus"][0] == "skipped" and junit.allowed_skip(outcomes["test_two_gpus"][1])
    assert outcomes["test_skips_at_run_time[1]"][0] == "skipped"
    assert not junit.allowed_skip(outcomes["test_skips_at_run_time[1]"][1])
    assert outcomes["test_fails"][0] == "failed"
    assert run.properties.get("fusedopt_gpu_guard") == "selftest", run.properties
    result = junit.verdict(run, ids, folder)
    assert not result["passed"] and result["counts"]["skipped_allowed"] == 1 and result["counts"]["failed"] == 1


# ----------------------------------------------------------------------------- guard and test selection
def check_guard_and_selection() -> Dict[str, object]:
    """Every test that skips without a GPU carries the mark that selects it for the GPU run,
    the GPU selection holds the required files, and the sanitizer picks exist."""
    with tempfile.TemporaryDirectory() as folder:
        audit = os.path.join(folder, "audit.json")
        collected = _pytest(["tests", "--collect-only", "-q"], FUSEDOPT_GPU_CHECK="audit",
                            FUSEDOPT_GPU_CHECK_AUDIT=audit)
        assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
        with open(audit) as file:
            found = json.load(file)
    unmarked, gpu_ids = found["unmarked"], found["selected"]
    assert not unmarked, f"tests that need a GPU but lack @pytest.mark.cuda (or triton): {unmarked[:10]}"
    for path in junit.REQUIRED_FILES:
        assert any(nodeid.startswith(path + "::") for nodeid in gpu_ids), f"{path} is not in the GPU selection"
    full = runner.sanitizer_order(gpu_ids, "full")
    cuda_ids = [i for i in gpu_ids if i.startswith(runner.CUDA_TESTS + "::")]
    assert set(full) == {i for i in cuda_ids if i.split("::")[-1].partition("[")[0] not in runner.SANITIZER_EXCLUDED}
    assert full[-1].split("::")[-1].startswith(runner.GRID_TEST)
    subset = runner.sanitizer_order(gpu_ids, "subset")
    assert subset and not any(runner.GRID_TEST in i for i in subset)
    representative = runner.representative_tests(gpu_ids)
    assert len(representative) == 3 and set(representative) <= set(cuda_ids), representative
    assert "bfloat16" in representative[1] and all(w in representative[2] for w in ("RMSprop", "centered",
                                                                                   "momentum=0.9")), representative
    return {"gpu_tests": len(gpu_ids), "memcheck_full": len(full), "memcheck_subset": len(subset)}


# ----------------------------------------------------------------------------- bench and bars
def _row(shape, optimizer, implementation, ms, numel, pct=None, fused_ms=None):
    row = {"shape": shape, "dtype": "float32", "optimizer": optimizer, "implementation": implementation,
           "median_ms": ms, "numel": numel, "pct_of_copy": pct if pct is not None else 50.0, "gbps": 1.0,
           "speedup_vs": {"fused": fused_ms / ms} if fused_ms else {}}
    return row


def check_bars_synthetic() -> None:
    big, xl, many = 256 * 2**20, 1_557_611_200, 40_960_000
    rows = []
    for optimizer in ("adam", "adamw"):
        rows += [_row("large", optimizer, "fusedopt[cuda]", 2.0, big, pct=93.0, fused_ms=2.5),
                 _row("large", optimizer, "fusedopt[triton]", 2.2, big),
                 _row("gpt2-xl", optimizer, "fusedopt[cuda]", 10.0, xl, pct=91.0, fused_ms=12.0),
                 _row("gpt2-xl", optimizer, "fusedopt[triton]", 11.0, xl),
                 _row("many-4096", optimizer, "fusedopt[cuda]", 0.5, many, pct=40.0, fused_ms=1.0),
                 _row("many-4096", optimizer, "fusedopt[triton]", 5.0, many)]
    document = {"copy_bandwidth": {"gbps": 4300.0}, "results": rows}
    bars = {bar["bar"]: bar for bar in bar_rules.evaluate(document)}
    assert set(bars) == set(bar_rules.BAR_TEXT)
    assert bars["adam_fp32_copy_fraction"]["measured"] == 0.91 and bars["adam_fp32_copy_fraction"]["pass"]
    assert abs(bars["cuda_vs_torch_fused_gpt2_xl"]["measured"] - 10 / 12) < 1e-3
    assert bars["cuda_vs_torch_fused_gpt2_xl"]["pass"] and bars["cuda_vs_torch_fused_10000x4096"]["pass"]
    # many-4096 has < 256 MiB of params: its slow Triton row does not count for the Triton bar
    assert abs(bars["triton_vs_cuda"]["measured"] - 1.1) < 1e-3 and bars["triton_vs_cuda"]["pass"]
    rows[2] = _row("gpt2-xl", "adam", "fusedopt[cuda]", 10.0, xl, pct=85.0, fused_ms=10.5)
    bars = {bar["bar"]: bar for bar in bar_rules.evaluate(document)}
    assert bars["adam_fp32_copy_fraction"]["pass"] is False and bars["cuda_vs_torch_fused_gpt2_xl"]["pass"] is False
    assert all(bar["pass"] is None and bar["measured"] is None for bar in bar_rules.evaluate(None))


def check_bench_arguments_and_real_json() -> None:
    """The check's bench options parse, and the bars read a real bench JSON (CPU, tiny,
    with its backends relabelled as a GPU run's)."""
    from fusedopt.bench.cli import build_parser
    from fusedopt.bench.workloads import build_workloads

    import torch

    for level in planning.PARTS_BY_NAME["bench"].levels:
        options = build_parser().parse_args(runner.bench_arguments(level.name, "/tmp/x", plot=True))
        assert options.shapes == ["large", "gpt2-xl", "many-4096"] and options.backend == ["cuda", "triton"]
    workloads = {w.name: w for w in build_workloads(["large", "gpt2-xl", "many-4096"], torch.device("cuda"), "full")}
    assert workloads["large"].numel * 4 >= bar_rules.MIN_COPY_BAR_BYTES
    assert workloads["gpt2-xl"].numel == 1_557_611_200 and workloads["many-4096"].shapes == ((4096,),) * 10_000
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.json")
        run = subprocess.run([sys.executable, "-m", "fusedopt.bench", "--device", "cpu", "--tiny", "--optimizers",
                              "adam,adamw", "--backend", "cpu,reference", "--shapes", "large,gpt2-xl,many-4096",
                              "--dtypes", "float32", "--torch-variants", "fused", "--steps", "2", "--warmup", "1",
                              "--threads", "1", "--json", path], cwd=folder, capture_output=True, text=True,
                             timeout=600, env=_environment())
        assert run.returncode == 0, run.stderr[-2000:]
        with open(path) as file:
            document = json.load(file)
    relabel = {"fusedopt[cpu]": "fusedopt[cuda]", "fusedopt[reference]": "fusedopt[triton]"}
    for row in document["results"]:
        row["implementation"] = relabel.get(row["implementation"], row["implementation"])
        row["numel"] = max(row["numel"], bar_rules.MIN_COPY_BAR_BYTES // 4)
    bars = bar_rules.evaluate(document)
    assert all(bar["measured"] is not None and bar["pass"] in (True, False) for bar in bars), bars


def check_train_gpt() -> None:
    """The planned train_gpt.py options parse, and the figures are read from its real output
    (a tiny bf16 run with the same features on the CPU)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_gpt", os.path.join(ROOT, "examples", "train_gpt.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for level in planning.PARTS_BY_NAME["train_gpt"].levels:
        config, compare, reference = module.parse_arguments(runner.train_gpt_arguments(level.name))
        assert compare and reference and config.master_weights and config.grad_scaler and config.dtype == "bfloat16"
    arguments = [a for a in runner.TRAIN_GPT_COMMON if a not in ("cuda",)]
    arguments[arguments.index("--device")] = "--device=cpu"
    for name, value in (("--n-head", "2"), ("--n-embd", "16"), ("--block-size", "16"), ("--batch-size", "2")):
        arguments[arguments.index(name) + 1] = value
    run = subprocess.run([sys.executable, "examples/train_gpt.py", *arguments, "--n-layer", "1", "--steps", "7"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=_environment())
    assert run.returncode == 0, run.stderr[-2000:]
    figures = runner.parse_train_gpt(run.stdout)
    for key in ("fusedopt_over_torch_fused_optimizer_time", "max_loss_difference", "fusedopt_vs_fp32_mean",
                "torch-fused_vs_fp32_mean", "fusedopt_closer_to_fp32", "fusedopt_optimizer_step_ms"):
        assert key in figures, (key, figures, run.stdout[-1500:])
    assert figures["steps"] == 7


# ----------------------------------------------------------------------------- sanitizer logs, summary
def check_sanitizer_logs() -> None:
    clean = ("========= COMPUTE-SANITIZER\ntests/test_cuda.py::test_a PASSED [ 50%]\n"
             "tests/test_cuda.py::test_b FAILED [100%]\n========= ERROR SUMMARY: 0 errors\n")
    report = sanitizer.read(clean)
    assert report["errors"] == 0 and report["tests_finished"] == 2 and report["test_outcomes"] == {
        "passed": 1, "failed": 1}
    dirty = ("========= Invalid __global__ write of size 4 bytes\n=========     at multi_tensor_kernel+0x70\n"
             "tests/test_cuda.py::test_a PASSED\n========= ERROR SUMMARY: 3 errors\n")
    report = sanitizer.read(dirty)
    assert report["errors"] == 3 and report["first_errors"][0].startswith("========= Invalid __global__ write")
    cut = "========= Invalid __global__ read of size 16 bytes\ntests/test_cuda.py::test_a PASSED\n"
    assert sanitizer.read(cut)["errors"] == 1, "errors count even when the run was cut before its summary"
    assert sanitizer.read("========= Error: Device not supported\n")["unsupported"]
    race = "========= Error: Race reported between Write access at 0x1 and Read access at 0x2\n"
    assert sanitizer.read(race)["errors"] == 1


def check_summary_and_output_folder() -> None:
    passing_bars = [{"bar": key, "pass": True} for key in bar_rules.BAR_TEXT]
    parts = {"build": {"status": "pass"}, "tests": {"status": "pass"}, "memcheck": {"status": "partial"},
             "racecheck_initcheck": {"status": "dropped"}}
    assert recording.overall({"parts": parts, "bars": passing_bars})["exit_code"] == 0
    assert recording.overall({"parts": {**parts, "tests": {"status": "fail"}}, "bars": passing_bars})["exit_code"] == 1
    assert recording.overall({"parts": {**parts, "memcheck": {"status": "fail"}}, "bars": passing_bars})[
        "exit_code"] == 1
    some_fail = passing_bars[:-1] + [{"bar": "triton_vs_cuda", "pass": False}]
    assert recording.overall({"parts": parts, "bars": some_fail})["exit_code"] == 2
    unmeasured = passing_bars[:-1] + [{"bar": "triton_vs_cuda", "pass": None}]
    assert recording.overall({"parts": parts, "bars": unmeasured})["status"] == "bars not met"
    assert recording.overall({"parts": parts, "bars": []})["exit_code"] == 2, "no bench is no pass"
    with tempfile.TemporaryDirectory() as folder:
        for name in recording.OUTPUT_FILES:
            with open(os.path.join(folder, name), "w") as file:
                file.write("x\n")
        with open(os.path.join(folder, "run.log"), "wb") as file:
            file.write(b"a" * (recording.MAX_FILE_BYTES + 4096))
        recording.write_json(os.path.join(folder, "summary.json"), {"overall": recording.overall({"parts": parts})})
        notes = recording.enforce_output_limits(folder)
        assert os.path.getsize(os.path.join(folder, "run.log")) <= recording.MAX_FILE_BYTES and notes
        assert len(os.listdir(folder)) == len(recording.OUTPUT_FILES) <= recording.MAX_FILES
        with open(os.path.join(folder, "summary.json")) as file:
            assert json.load(file)["overall"]["status"] == "bars not met"
    assert len(recording.OUTPUT_FILES) <= recording.MAX_FILES
    assert len(recording.source_digest(ROOT)) == 64
    assert recording.git_facts("/", "abc", "2026-01-01")["commit"] == "abc"


def check_driver_without_gpu() -> object:
    """The driver end to end where torch sees no GPU: it stops after the probe, still writes
    summary.json (status fail) within the output limits, and exits 1."""
    import torch

    if torch.cuda.is_available():
        return "not applicable on a machine with a GPU"
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "out")
        run = subprocess.run([os.path.join(ROOT, ".ci", "gpu"), out, "--skip-build", "--budget-s", "300",
                              "--python", sys.executable], capture_output=True, text=True, timeout=600,
                             env=_environment())
        assert run.returncode == 1, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
        with open(os.path.join(out, "summary.json")) as file:
            summary = json.load(file)
        files = os.listdir(out)
    assert summary["overall"]["status"] == "fail" and summary["parts"]["probe"]["status"] == "fail", summary
    assert {summary["parts"][name]["status"] for name in ("build", "tests", "bench")} == {"not run"}
    assert "plan for a budget of 300 s" in run.stdout and "STATUS FAIL" in run.stdout
    assert set(files) <= set(recording.OUTPUT_FILES) and "summary.json" in files
    for key in ("torch", "triton", "fusedopt_commit", "fusedopt_source_sha256", "date"):
        assert key in summary["environment"], key
    return None


CHECKS: List[Tuple[str, Callable[[], object]]] = [
    ("plan and budget arithmetic", check_plan),
    ("junit verdicts on synthetic XML (false pass included)", check_junit_verdicts),
    ("junit verdict on pytest's own XML; the guard's properties and refusal", check_real_pytest_junit),
    ("bars on synthetic bench results", check_bars_synthetic),
    ("bench options and bars on a real bench JSON", check_bench_arguments_and_real_json),
    ("sanitizer logs", check_sanitizer_logs),
    ("summary verdict and output folder limits", check_summary_and_output_folder),
    ("train_gpt.py options and output", check_train_gpt),
    ("GPU test selection and sanitizer picks", check_guard_and_selection),
    ("the driver end to end without a GPU", check_driver_without_gpu),
]


def dry_run(options) -> int:
    print("\n".join(planning.make_plan(options.budget_s).lines()))
    print("\nbench at each level: python -m fusedopt.bench " + " ".join(runner.bench_arguments("full", "OUT", True)))
    print("train_gpt at full: python examples/train_gpt.py " + " ".join(runner.train_gpt_arguments("full")))
    print("GPU tests: python -m pytest " + shlex.join(runner.GPU_TESTS) + " (junit checked; allowed skips: "
          + "; ".join(pattern for pattern, _ in junit.ALLOWED_SKIPS) + ")\n")
    failed = 0
    for name, check in CHECKS:
        try:
            found = check()
            print(f"  ok    {name}" + (f": {found}" if found else ""), flush=True)
        except Exception:
            failed += 1
            print(f"  FAIL  {name}\n" + textwrap.indent(traceback.format_exc(), "        "), flush=True)
    print(f"\n.ci/gpu --dry-run: {len(CHECKS) - failed} of {len(CHECKS)} self-checks passed")
    return 1 if failed else 0
