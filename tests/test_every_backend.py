"""Every registered optimizer on every backend, from the spec rows: the one harness whose
backend is a fixture with per-backend sizes (Triton's interpreter is slow; a GPU takes
bigger tensors). Each representative case of each row runs several steps in float64 and
float32 against what the row says the optimizer must equal (torch.optim or a paper's
pseudo-code), with _compare's tolerance table, and keeps exactly that optimizer's state
keys. The full option grid runs on the reference and cpu backends in test_optimizers.py."""
from __future__ import annotations

import pytest
import torch

import fusedopt
from _compare import REPRESENTATIVE_CASES, assert_params_close, gradients, initial_values, run
from fusedopt.optim import _spec

# Per backend: the device its tensors live on, the shapes and the steps.
HARNESS = {
    "reference": ("cpu", ((0,), (1,), (17,), (4097,), (7, 13)), 12),
    "cpu": ("cpu", ((0,), (1,), (17,), (4097,), (7, 13)), 12),
    "triton": ("cuda" if torch.cuda.is_available() else "cpu", ((0,), (1,), (17,), (5, 7)), 6),
    "cuda": ("cuda", ((0,), (1,), (17,), (4097,), (70001,), (33, 65)), 12),
}


def usable(backend: str, device: str):
    if device == "cuda" and not torch.cuda.is_available():
        return "no GPU"
    return fusedopt.backends.unusable_reason(backend, torch.device(device))


@pytest.fixture(params=list(HARNESS))
def harness(request):
    backend = request.param
    device, shapes, steps = HARNESS[backend]
    reason = usable(backend, device)
    if reason:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")
    return backend, torch.device(device), shapes, steps


def test_every_registered_optimizer_has_a_spec_row():
    rows = {case.optimizer for case in REPRESENTATIVE_CASES}
    kinds = {getattr(fusedopt, name).spec.kind for name in rows}
    # Kinds of another kernel shape (Adafactor) have their own harness (tests/test_adafactor.py).
    assert kinds == set(_spec.elementwise_kinds()), "a registered optimizer has no row in tests/optimizer_specs.py"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_matches_expected_on_every_backend(case, dtype, harness):
    backend, device, shapes, steps = harness
    values = [v.to(device) for v in initial_values(shapes=shapes)]
    grads = [[g.to(device) for g in step] for step in gradients(steps=steps, shapes=shapes)]
    params, opt = run(lambda ps: case.fused(ps, backend), values, grads, dtype)
    expected_params, expected_opt = run(lambda ps: case.expected(ps), values, grads, dtype)
    assert_params_close(params, expected_params, dtype)
    for p, q in zip(params, expected_params):
        assert set(opt.state.get(p, {})) == set(expected_opt.state.get(q, {}))
