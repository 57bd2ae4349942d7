"""The GPU check (.ci/gpu) on a machine without a GPU: its self-checks (`--dry-run`) and
the pieces of its logic that decide pass or fail, as unit tests.

The GPU run itself cannot be tested here; what can be is everything that decides whether
it passed: reading junit XML (a run that skipped the CUDA tests must fail), the bars on a
bench document, the budget plan and the summary's verdict.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".ci"))

from gpu_check import bars, dry_run, junit, plan, summary  # noqa: E402

# The self-checks that need no subprocess, one test each; the others run in test_dry_run.
FAST = {"plan and budget arithmetic", "junit verdicts on synthetic XML (false pass included)",
        "bars on synthetic bench results", "sanitizer logs", "summary verdict and output folder limits"}


@pytest.mark.parametrize("check", [check for name, check in dry_run.CHECKS if name in FAST],
                         ids=[name for name, _ in dry_run.CHECKS if name in FAST])
def test_self_check(check):
    check()


def test_dry_run_passes_and_prints_the_plan():
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([str(REPO / ".ci" / "gpu"), "--dry-run", "--python", sys.executable],
                         capture_output=True, text=True, timeout=900, env=environment)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{len(dry_run.CHECKS)} of {len(dry_run.CHECKS)} self-checks passed" in run.stdout
    for part in plan.PARTS:
        assert part.name in run.stdout
    assert "plan for a budget of 480 s" in run.stdout and "fits" in run.stdout


def test_the_reported_false_pass_fails():
    """`pip install . && pytest tests -m cuda` from the repository root: test_cuda.py skips
    itself at importorskip("fusedopt._C"), pytest reports 2 skipped and exits 0."""
    xml = ('<testsuites><testsuite name="pytest" tests="2" skipped="2">'
           '<testcase classname="tests.test_cuda" name="tests.test_cuda">'
           '<skipped type="pytest.skip" message="could not import \'fusedopt._C\'">skip</skipped></testcase>'
           '<testcase classname="tests.test_cuda_plan" name="tests.test_cuda_plan">'
           '<skipped type="pytest.skip" message="could not import \'fusedopt._C\'">skip</skipped></testcase>'
           '</testsuite></testsuites>')
    result = junit.verdict(junit.parse(xml), [], str(REPO))
    assert result["passed"] is False
    assert result["counts"]["passed"] == 0 and result["counts"]["skipped_not_allowed"] == 2
    assert any("no GPU test was collected" in reason for reason in result["reasons"])
    assert any("GPU guard" in reason for reason in result["reasons"])


@pytest.mark.parametrize("message, allowed", [("needs two GPUs", True),
                                              ("with a GPU the tests above run the compiled kernels", True),
                                              ("needs a CUDA GPU", False),
                                              ("fusedopt was built without CUDA kernels", False),
                                              ("needs 17.0 GiB of free GPU memory", False),
                                              ("the profiler recorded no CUDA kernels here", False)])
def test_allowed_skip_reasons(message, allowed):
    assert bool(junit.allowed_skip(message)) is allowed


def test_bars_are_unmeasured_without_rows_never_passed():
    evaluated = bars.evaluate({"results": [], "copy_bandwidth": {"gbps": 4000.0}})
    assert [bar["pass"] for bar in evaluated] == [None] * len(bars.BAR_TEXT)
    assert summary.overall({"parts": {"tests": {"status": "pass"}}, "bars": evaluated})["exit_code"] == 2


def test_default_budget_keeps_every_mandatory_part_and_drops_the_sanitizer_subset_first():
    default = plan.make_plan(480)
    assert default.fits
    assert all(default.chosen[part.name] is not None for part in plan.PARTS if part.mandatory)
    assert plan.SHRINK_LADDER[0] == ("racecheck_initcheck", None)
    assert plan.SHRINK_LADDER[1][0] == "bench"


def test_gpu_command_needs_an_output_folder():
    run = subprocess.run([str(REPO / ".ci" / "gpu")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "OUT_DIR is required" in run.stderr
