"""Complex params, as torch.optim's default implementations handle them: every update
runs on torch.view_as_real views of the param, its grad and its state, and the state
stays complex in optimizer.state and in checkpoints."""
import pytest
import torch

import fusedopt

CASES = {
    "Adam": (fusedopt.Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.1)),
    "Adam-amsgrad-maximize": (fusedopt.Adam, torch.optim.Adam, dict(lr=0.05, amsgrad=True, maximize=True)),
    "AdamW": (fusedopt.AdamW, torch.optim.AdamW, dict(lr=0.05, weight_decay=0.1)),
    "SGD-nesterov": (fusedopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "SGD-dampening": (fusedopt.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.5)),
    "RMSprop-centered": (fusedopt.RMSprop, torch.optim.RMSprop,
                         dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1)),
    # torch starts these states at complex(v, v), not v + 0j: Adagrad's `sum` at
    # complex(initial_accumulator_value, initial_accumulator_value), Rprop's `step_size` at
    # complex(lr, lr), so the imaginary parts move as the real parts do
    "Adagrad-initial-accumulator": (fusedopt.Adagrad, torch.optim.Adagrad,
                                    dict(lr=0.05, initial_accumulator_value=0.5, lr_decay=0.01, weight_decay=0.1)),
    "Rprop": (fusedopt.Rprop, torch.optim.Rprop, dict(lr=0.05)),
    "Adadelta": (fusedopt.Adadelta, torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.1)),
    "Adamax": (fusedopt.Adamax, torch.optim.Adamax, dict(lr=0.05, weight_decay=0.1)),
    "ASGD": (fusedopt.ASGD, torch.optim.ASGD, dict(lr=0.05, t0=3, weight_decay=0.1)),
    "NAdam": (fusedopt.NAdam, torch.optim.NAdam, dict(lr=0.05, weight_decay=0.1)),
    "RAdam-decoupled": (fusedopt.RAdam, torch.optim.RAdam, dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("case", CASES)
def test_complex_params_match_torch_view_as_real(case, dtype, backend):
    ours, theirs, kwargs = CASES[case]
    g = torch.Generator().manual_seed(0)
    shapes = [(7,), (3, 5), (1,), (0,)]
    values = [torch.randn(s, dtype=dtype, generator=g) for s in shapes]
    # Mixed with a real param of the matching precision, in the same group.
    real = torch.randn(4, dtype=torch.float32 if dtype == torch.complex64 else torch.float64, generator=g)
    grads = [[torch.randn(s, dtype=dtype, generator=g) for s in shapes] + [torch.randn(4, dtype=real.dtype, generator=g)]
             for _ in range(8)]
    params = [torch.nn.Parameter(v.clone()) for v in (*values, real)]
    expected = [torch.nn.Parameter(v.clone()) for v in (*values, real)]
    opt = ours(params, backend=backend, **kwargs)
    reference = theirs(expected, foreach=False, **kwargs)
    for step_grads in grads:
        for p, q, grad in zip(params, expected, step_grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.complex64 else dict(rtol=1e-12, atol=1e-12)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p, q, **tolerance)
        for key, value in reference.state[q].items():
            assert opt.state[p][key].dtype == value.dtype, key  # complex state stays complex
            torch.testing.assert_close(opt.state[p][key], value, **tolerance)


def test_complex_state_dict_round_trips_with_torch(backend):
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.complex64))
    q = torch.nn.Parameter(p.detach().clone())
    opt, reference = fusedopt.Adam([p], lr=0.1, backend=backend), torch.optim.Adam([q], lr=0.1)
    for step in range(3):
        grad = torch.randn(6, dtype=torch.complex64)
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        reference.step()
        if step == 1:  # swap checkpoints mid-run, both ways
            ours_saved, theirs_saved = opt.state_dict(), reference.state_dict()
            opt.load_state_dict(theirs_saved)
            reference.load_state_dict(ours_saved)
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
