"""Reading compute-sanitizer's output around a pytest run."""
import re
from typing import Dict

# compute-sanitizer prefixes its reports with "========= "; these start an error report.
_ERROR = re.compile(r"^========= (Invalid |Program hit |Race reported|Uninitialized |Error: |.*[Hh]azard)",
                    re.MULTILINE)
_SUMMARY = re.compile(r"^========= ERROR SUMMARY: (\d+) errors?", re.MULTILINE)
_UNSUPPORTED = re.compile(r"Device not supported|Target application terminated before first instrumented API call"
                          r"|unable to find injection library|not supported on this platform", re.IGNORECASE)
_TEST = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", re.MULTILINE)


def read(output: str) -> Dict[str, object]:
    """Errors reported, whether the tool could run at all, and the tests pytest finished."""
    summaries = [int(n) for n in _SUMMARY.findall(output)]
    tests = _TEST.findall(output)
    outcomes: Dict[str, int] = {}
    for _, outcome in tests:
        outcomes[outcome.lower()] = outcomes.get(outcome.lower(), 0) + 1
    return {
        "errors": max([len(_ERROR.findall(output))] + summaries),
        "error_summary_seen": bool(summaries),
        "unsupported": bool(_UNSUPPORTED.search(output)),
        "tests_finished": len(tests),
        "test_outcomes": outcomes,
        "first_errors": [line for line in output.splitlines() if _ERROR.match(line)][:10],
    }
