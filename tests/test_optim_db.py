"""torch's own optimizer test inputs (torch.testing._internal.common_optimizers.optim_db),
run against fusedopt: every input of every optimizer fusedopt implements follows torch's
for-loop trajectory, and every error input raises torch's error type. Where fusedopt
deliberately differs, DEVIATIONS says why (the README lists them too)."""
import inspect

import pytest
import torch

import fusedopt

pytest.importorskip("expecttest")  # common_optimizers imports torch's test utilities, which need it
common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")
OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum

# Every fusedopt optimizer torch.optim also has (Lion has no torch inputs).
IMPLEMENTED = {name: getattr(fusedopt, name) for name in fusedopt.optim.__all__ if hasattr(torch.optim, name)}
INFOS = {info.optim_cls.__name__: info for info in common_optimizers.optim_db
         if info.optim_cls.__name__ in IMPLEMENTED}

# error_regex of a torch error input -> (what fusedopt raises instead, why)
DEVIATIONS = {
    ".*a parameter group with duplicate parameters.*": (
        ValueError, "torch warns and then updates the param twice; a fused update cannot write one tensor "
                    "twice, so fusedopt refuses the group"),
    "lr as a Tensor is not supported for capturable=False and foreach=True": (
        None, "foreach is accepted and ignored (fusedopt always fuses), and a tensor lr works on every backend"),
    r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True": (
        None, "foreach is accepted and ignored (fusedopt always fuses), and tensor betas work on every backend"),
}


def _inputs(name):
    return INFOS[name].optim_inputs_func(device="cpu", dtype=torch.float32)


def _error_inputs(name):
    return INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)


CASES = [(name, i) for name in IMPLEMENTED for i in range(len(_inputs(name)))]
ERROR_CASES = [(name, i) for name in IMPLEMENTED for i in range(len(_error_inputs(name)))]


def _case_id(case):
    name, index = case
    return f"{name}-{index}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_torch_optim_inputs_follow_torchs_trajectory(case, backend):
    name, index = case
    optim_input = _inputs(name)[index]
    g = torch.Generator().manual_seed(index)
    shapes = [(10, 5), (5,), (3, 1, 2), (1,)]
    values = [torch.randn(s, generator=g) for s in shapes]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    kwargs = dict(optim_input.kwargs)
    optimizer = IMPLEMENTED[name](ours, backend=backend, **kwargs)
    for_loop = {"foreach": False} if "foreach" in inspect.signature(INFOS[name].optim_cls).parameters else {}
    reference = INFOS[name].optim_cls(theirs, **kwargs, **for_loop)
    sparse = getattr(IMPLEMENTED[name], "sparse_grads_only", False)  # SparseAdam: sparse COO grads
    for _ in range(7):
        for p, q in zip(ours, theirs):
            grad = torch.randn(p.shape, generator=g)
            if sparse:
                grad = grad.to_sparse()
            p.grad, q.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{optim_input.desc}")


@pytest.mark.parametrize("case", ERROR_CASES, ids=_case_id)
def test_torch_optim_error_inputs_raise_torchs_error(case):
    name, index = case
    error_input = _error_inputs(name)[index]
    optimizer_input = error_input.optimizer_error_input
    params = optimizer_input.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(3))]
    expected, why = DEVIATIONS.get(error_input.error_regex, (error_input.error_type, None))

    def run():
        optimizer = IMPLEMENTED[name](params, **optimizer_input.kwargs)
        if error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
            for p in optimizer.param_groups[0]["params"]:
                if p.grad is None:
                    p.grad = torch.ones_like(p)
            optimizer.step()

    if expected is None:  # fusedopt accepts what torch refuses (see DEVIATIONS)
        run()
    elif issubclass(expected, Warning):
        with pytest.warns(expected, match=error_input.error_regex):
            run()
    else:
        match = error_input.error_regex if why is None else None
        with pytest.raises(expected, match=match):
            run()
