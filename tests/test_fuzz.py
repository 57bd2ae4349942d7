"""A property-based fuzzer (hypothesis) for everything a step can be handed.

Each example draws a param list (0-40 tensors of the four float dtypes, rarely complex or
int; empty, one-element and odd shapes; contiguous, permuted, non-dense and expanded
layouts; views of one storage at odd offsets, some overlapping; duplicates), an optimizer
with valid or invalid options (master weights and max_grad_norm included), and 1-5 steps
with mutations before each (grads of every kind, `p.data` swapped, state deleted,
replaced, grown or loaded from another optimizer's state_dict, zero_grad, and before the
last step, storages shrunk or freed). It runs the example twice, on fusedopt with the
backend under test and on an oracle: torch.optim (or _compare's KingmaBaAdam for
`optimized_update`, with torch's clip_grad_norm_ for `max_grad_norm`) when the params are
float32/float64, else fusedopt's other backend (16-bit params and master weights, where
torch has no optimizer with the same rounding).

Every operation must end in one of:
- the same results as the oracle: params and state, with _compare's tolerances;
- a clear Python exception (see `_check_error`) raised before anything was written.
And whatever happens: no crash (each example runs in a forked child, so a crash is a
reported, shrunk failure rather than the end of pytest), the bytes around every param and
grad unchanged (each is a view into a larger buffer whose other bytes hold a pattern),
grads unchanged. Inputs the kernels cannot handle must raise: a tensor whose storage is
smaller than its span (shrunk or freed with `untyped_storage().resize_`), a grad sharing
memory with a tensor the step writes.

CI runs a fixed (derandomized) set of examples per backend in under a minute; for a longer
local run, e.g.
    FUSEDOPT_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q -x -k "not triton"
and FUSEDOPT_FUZZ_SEED=<n> draws another set; FUSEDOPT_FUZZ_FORK=0 runs the examples in
pytest's own process, several times faster, for long runs of code that passes (a crash
then ends pytest instead of being shrunk to a minimal example).

The harness: _fuzz_scenarios.py (what an example is, and the strategies), _fuzz_memory.py
(guarded buffers), _fuzz_runner.py (running and judging an example), _fuzz_isolation.py
(a forked child per example). `.ci/sanitize` runs this file under ASan
and UBSan, where a kernel touching memory outside its tensors is a report even when the
values come out right. A failure prints the shrunk scenario and its category (the class
of the AssertionError: WrongResult, AcceptedBadInput, Crash, ...).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from _fuzz_isolation import ForkServer, outcome
from _fuzz_runner import FAILURES, FuzzFailure, run_example
from _fuzz_scenarios import Scenario, scenarios

EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_EXAMPLES", "100"))
TRITON_EXAMPLES = int(os.environ.get("FUSEDOPT_FUZZ_TRITON_EXAMPLES", "4"))
SEED = os.environ.get("FUSEDOPT_FUZZ_SEED")
FORK = os.environ.get("FUSEDOPT_FUZZ_FORK", "1") != "0"


@pytest.fixture(scope="module")
def run_isolated():
    server = ForkServer() if FORK else None

    def run(scenario: Scenario, backend: str) -> None:
        if server is not None:
            category, message = server.run(scenario, backend)
        else:
            category, message = outcome(lambda: run_example(scenario, backend))
        if category is not None:
            raise FAILURES.get(category, FuzzFailure)(f"[{category}] {message}")

    yield run
    if server is not None:
        server.close()


def _settings(examples: int):
    return settings(
        max_examples=examples, derandomize=SEED is None, database=None, deadline=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink), print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


def _seeded(test):
    return hypothesis_seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@_seeded
@_settings(EXAMPLES)
@given(scenario=scenarios())
def test_fuzz(backend, scenario, run_isolated):
    run_isolated(scenario, backend)


@pytest.mark.triton
@_seeded
@_settings(TRITON_EXAMPLES)
@given(scenario=scenarios(max_params=4))
def test_fuzz_triton(scenario, run_isolated):
    """A handful of small examples on the Triton kernels (Triton's interpreter is slow)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the fuzzer's tensors are CPU tensors")
    run_isolated(scenario, "triton")
