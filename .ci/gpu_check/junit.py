"""Reading pytest's junit XML and deciding whether the GPU tests really ran and passed.

A run passes only if all of these hold:
- the XML carries the properties that .ci/gpu_check/pytest_gpu_guard.py records, so it
  came from a pytest that imported fusedopt._C from this checkout, with CUDA kernels
  built and usable and TRITON_INTERPRET unset (a run that imported a source tree without
  `_C` skips tests/test_cuda.py at its importorskip: "2 skipped", exit status 0);
- every test collected (by a `--collect-only` of the same selection) is in the XML;
- at least one test of each file in REQUIRED_FILES passed;
- no test failed or errored, and no test skipped for a reason outside ALLOWED_SKIPS.
"""
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# Skip reasons a GPU run may show, each with why it is fine on the lent machine.
ALLOWED_SKIPS: Tuple[Tuple[str, str], ...] = (
    (r"^needs two GPUs$", "the lent machine has one GPU"),
    (r"^with a GPU the tests above run the compiled kernels$",
     "test_triton.py's compile-for-sm_90 check is for machines without a GPU"),
)
REQUIRED_FILES = ("tests/test_cuda.py", "tests/test_triton.py")
GUARD_PROPERTY = "fusedopt_gpu_guard"  # value "ok" when the guard's checks passed


@dataclass(frozen=True)
class Case:
    classname: str
    name: str
    outcome: str  # passed, failed, error, skipped
    message: str = ""

    @property
    def key(self) -> Tuple[str, str]:
        return self.classname, self.name


@dataclass
class JunitRun:
    cases: List[Case] = field(default_factory=list)
    properties: Dict[str, str] = field(default_factory=dict)


def parse(text: str) -> JunitRun:
    """The test cases and suite properties of a junit XML document (raises ValueError)."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ValueError(f"junit XML does not parse: {error}") from error
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    run = JunitRun()
    for suite in suites:
        for prop in suite.findall("./properties/property"):
            run.properties[prop.get("name", "")] = prop.get("value", "")
        for case in suite.iter("testcase"):
            run.cases.append(_case(case))
    return run


def _case(element) -> Case:
    classname, name = element.get("classname", ""), element.get("name", "")
    for tag, outcome in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
        child = element.find(tag)
        if child is not None:
            return Case(classname, name, outcome, child.get("message", "") or (child.text or "").strip())
    return Case(classname, name, "passed")


def junit_key(nodeid: str) -> Tuple[str, str]:
    """(classname, name) pytest's junit report gives the test `nodeid`."""
    path, bracket, parameters = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + parameters
    return ".".join(names[:-1]), names[-1]


def allowed_skip(message: str) -> Optional[str]:
    """Why the skip reason `message` is allowed, or None."""
    reason = message.strip()
    # pytest writes "file:line: reason" into the text and the bare reason into `message`
    reason = re.sub(r"^\S+:\d+: ", "", reason)
    for pattern, why in ALLOWED_SKIPS:
        if re.search(pattern, reason):
            return why
    return None


def verdict(run: Optional[JunitRun], collected: Sequence[str], checkout: str) -> Dict[str, object]:
    """Counts and pass/fail of a GPU test run; `collected` holds the node ids a
    --collect-only of the same selection found, `checkout` the repository root."""
    reasons: List[str] = []
    counts = {"collected": len(collected), "in_xml": 0, "passed": 0, "failed": 0, "error": 0,
              "skipped_allowed": 0, "skipped_not_allowed": 0}
    result: Dict[str, object] = {"counts": counts, "reasons": reasons, "skips_allowed": [], "problems": []}
    if run is None:
        reasons.append("no junit XML: pytest did not finish")
        result["passed"] = False
        return result
    counts["in_xml"] = len(run.cases)
    guard = run.properties.get(GUARD_PROPERTY)
    if guard != "ok":
        reasons.append(f"the XML lacks {GUARD_PROPERTY}=ok: the tests did not run under the GPU guard"
                       f" (found {guard!r})")
    c_file = run.properties.get("fusedopt_c_file", "")
    if not c_file.startswith(checkout.rstrip("/") + "/"):
        reasons.append(f"the tests imported fusedopt._C from {c_file!r}, not from the checkout {checkout}")
    if not collected:
        reasons.append("no GPU test was collected")
    by_key = {case.key: case for case in run.cases}
    missing = [nodeid for nodeid in collected if junit_key(nodeid) not in by_key]
    if missing:
        reasons.append(f"{len(missing)} of {len(collected)} collected GPU tests are not in the XML,"
                       f" e.g. {missing[:3]}")
    problems = []
    for case in run.cases:
        if case.outcome == "skipped":
            why = allowed_skip(case.message)
            if why:
                counts["skipped_allowed"] += 1
                result["skips_allowed"].append(f"{case.classname}::{case.name}: {case.message} ({why})")
                continue
            counts["skipped_not_allowed"] += 1
        else:
            counts[case.outcome] += 1
            if case.outcome == "passed":
                continue
        problems.append(f"{case.outcome}: {case.classname}::{case.name}: {case.message[:300]}")
    result["problems"] = problems
    if counts["failed"] or counts["error"]:
        reasons.append(f"{counts['failed']} failed, {counts['error']} errors")
    if counts["skipped_not_allowed"]:
        reasons.append(f"{counts['skipped_not_allowed']} skipped for a reason outside the allow-list")
    for path in REQUIRED_FILES:
        module = re.sub(r"\.py$", "", path.replace("/", "."))
        if not any(case.outcome == "passed" and case.classname.split(".")[:2] == module.split(".")
                   for case in run.cases):
            reasons.append(f"no test of {path} passed")
    result["passed"] = not reasons
    return result


def nodeids_of_function(collected: Iterable[str], path: str) -> Dict[str, List[str]]:
    """Collected node ids of the file `path`, grouped by test function, in collection order."""
    groups: Dict[str, List[str]] = {}
    for nodeid in collected:
        if nodeid.startswith(path + "::"):
            function = nodeid.split("::")[-1].partition("[")[0]
            groups.setdefault(function, []).append(nodeid)
    return groups
