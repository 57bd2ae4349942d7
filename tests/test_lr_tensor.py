"""A learning rate given as a tensor is read by the kernels, not with .item() (issue 9).

torch's optimizers accept a one-element tensor lr, and schedulers then write the new
value into it in place. The cpu, cuda and triton backends read it through a pointer
(configs' lr_tensor, as float64 on the params' device), so a CUDA graph captured once
follows the schedule at each replay; the reference backend reads it as a number. Either
way every step must use the tensor's current value, as torch does.
"""
import math

import pytest
import torch

import fusedopt
import fusedopt.backends

BACKENDS = ("reference", "cpu", "triton")
HYPER = {"Adam": {}, "AdamW": {"weight_decay": 0.1}, "SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.5}}
SCHEDULE = [1e-2, 1e-2, 3e-3, 3e-3, 5e-4]


def _params(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in [(6, 5), (17,)]]


def _grads(params, step):
    generator = torch.Generator().manual_seed(10 + step)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def _run(make, lr, dtype=torch.float64):
    params = _params(dtype)
    optimizer = make(params)
    for step, value in enumerate(SCHEDULE):
        if isinstance(lr, torch.Tensor):
            lr.fill_(value)  # as a scheduler does with a tensor lr
        else:
            for group in optimizer.param_groups:
                group["lr"] = value
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        optimizer.step()
    return params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(HYPER))
def test_lr_tensor_changed_in_place_is_followed(name, backend):
    lr = torch.tensor(SCHEDULE[0], dtype=torch.float64)
    ours = _run(lambda ps: getattr(fusedopt, name)(ps, lr=lr, backend=backend, **HYPER[name]), lr)
    theirs_lr = torch.tensor(SCHEDULE[0], dtype=torch.float64)
    theirs = _run(lambda ps: getattr(torch.optim, name)(ps, lr=theirs_lr, foreach=False, **HYPER[name]), theirs_lr)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("name", list(HYPER))
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=str)
def test_lr_tensor_gives_the_bits_of_the_number(name, backend, lr_dtype):
    """Through the pointer or as a number, the same float64 learning rate: the same bits."""
    lr = torch.tensor(SCHEDULE[0], dtype=lr_dtype)
    by_pointer = _run(lambda ps: getattr(fusedopt, name)(ps, lr=lr, backend=backend, **HYPER[name]), lr,
                      torch.float32)
    numbers = [float(torch.tensor(v, dtype=lr_dtype)) for v in SCHEDULE]
    params = _params(torch.float32)
    optimizer = getattr(fusedopt, name)(params, lr=numbers[0], backend=backend, **HYPER[name])
    for step, value in enumerate(numbers):
        optimizer.param_groups[0]["lr"] = value
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        optimizer.step()
    for p, q in zip(by_pointer, params):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend,by_pointer", [("reference", False), ("cpu", True), ("triton", True)])
def test_which_backends_read_the_tensor(backend, by_pointer, monkeypatch):
    seen = []
    implementation = fusedopt.backends.get(backend)
    original = implementation.update

    def spy(kind, batch, config):
        seen.append(config)
        return original(kind, batch, config)

    monkeypatch.setattr(implementation, "update", spy)
    lr = torch.tensor(1e-3)
    params = _params(torch.float32)
    optimizer = fusedopt.Adam(params, lr=lr, backend=backend)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    optimizer.step()
    (config,) = seen
    if by_pointer:
        assert math.isnan(config.lr)
        assert config.lr_tensor.dtype == torch.float64 and config.lr_tensor.dim() == 0
        assert float(config.lr_tensor) == float(lr)
    else:
        assert config.lr == float(lr) and config.lr_tensor is None


def test_how_run_update_passes_the_learning_rate():
    """Numbers as numbers; a tensor on the params' device, to a backend that reads tensors,
    as a float64 tensor; any other tensor through .item()."""
    from fusedopt.optim._plan import learning_rate

    cpu, reference = fusedopt.backends.get("cpu"), fusedopt.backends.get("reference")
    assert learning_rate(0.5, cpu, torch.device("cpu")) == (0.5, None)
    value, tensor = learning_rate(torch.tensor(0.25), cpu, torch.device("cpu"))
    assert math.isnan(value) and tensor.dtype == torch.float64 and float(tensor) == 0.25
    assert learning_rate(torch.tensor(0.25), reference, torch.device("cpu")) == (0.25, None)
    assert learning_rate(torch.tensor([0.25]), cpu, torch.device("cuda", 0)) == (0.25, None)  # another device
