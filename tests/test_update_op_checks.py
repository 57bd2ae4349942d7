"""torch.ops.fusedopt.update_ refuses malformed calls before native code runs (issue 9).

The op is public (torch.compile calls it; so can anyone), and native code trusts the
address table built from its arguments: an Adam call with no step counters used to hand
the CPU kernel a null step pointer (a segfault) and the CUDA kernels one to write through.
Each malformed argument must raise a clear exception instead.
"""
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedopt._ops  # noqa: F401  (registers the op)

ADAM_FIELDS = "lr,beta1,beta2,eps,weight_decay,amsgrad,maximize,decoupled_weight_decay,optimized_update,absolute_weight_decay"
ADAM_VALUES = [1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
SGD_FIELDS = "lr,momentum,dampening,weight_decay,nesterov,maximize"
RMSPROP_FIELDS = "lr,alpha,eps,weight_decay,momentum,centered,maximize"


def adam_args(n=2, **changes):
    """A well-formed Adam call on n params of 5 elements, as a dict of the op's arguments."""
    params = [torch.randn(5) for _ in range(n)]
    args = dict(
        kind="adam", params=params, grads=[torch.randn(5) for _ in params],
        steps=[torch.tensor(0.0) for _ in params], states=[torch.zeros(5) for _ in range(2 * n)],
        state_keys="exp_avg,exp_avg_sq", field_names=ADAM_FIELDS, field_values=list(ADAM_VALUES),
        first_step=False, master_weights=False, grad_scale=None, found_inf=None, clip_coef=None, backend="cpu",
    )
    args.update(changes)
    return args


def call(args):
    torch.ops.fusedopt.update_(**args)


def test_a_well_formed_call_runs():
    args = adam_args()
    before = [p.clone() for p in args["params"]]
    call(args)
    assert all(not torch.equal(a, b) for a, b in zip(before, args["params"]))
    assert [float(s) for s in args["steps"]] == [1.0, 1.0]


# The null step pointer: Adam and RMSprop with no or too few step counters, run in a child
# so that a regression crashes the child, not pytest (before the fix: exit -11).
CHILD = textwrap.dedent("""
    import torch, fusedopt._ops
    n = 2
    for kind in ("adam", "rmsprop"):
        for steps in (0, 1):
            if kind == "adam":
                keys, states = "exp_avg,exp_avg_sq", [torch.zeros(5) for _ in range(2 * n)]
                fields = "lr,beta1,beta2,eps,weight_decay,amsgrad,maximize,decoupled_weight_decay,optimized_update,absolute_weight_decay"
                values = [1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
            else:
                keys, states = "square_avg", [torch.zeros(5) for _ in range(n)]
                fields, values = "lr,alpha,eps,weight_decay,momentum,centered,maximize", [1e-2, .99, 1e-8, 0, 0, 0, 0]
            try:
                torch.ops.fusedopt.update_(
                    kind, [torch.randn(5) for _ in range(n)], [torch.randn(5) for _ in range(n)],
                    [torch.tensor(0.0) for _ in range(steps)], states, keys, fields, values,
                    False, False, None, None, None, "cpu")
                print(kind, steps, "no exception", flush=True)
            except ValueError as error:
                print(kind, steps, "ValueError:", error, flush=True)
""")


def test_missing_step_counters_raise_instead_of_crashing():
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"exit {child.returncode}: {child.stdout}{child.stderr[-2000:]}"
    lines = child.stdout.splitlines()
    assert len(lines) == 4 and all("ValueError" in line and "step counter per param" in line for line in lines), lines


@pytest.mark.parametrize("changes,message", [
    (dict(kind="adamw"), "unknown kind"),
    (dict(backend="gpu"), "Invalid backend"),
    (dict(grads=[torch.randn(5)]), "1 grads for 2 params"),
    (dict(steps=[torch.tensor(0.0)] * 3), "step counter per param"),
    (dict(states=[torch.zeros(5)] * 3), "3 states for 2 state keys x 2 params"),
    (dict(state_keys="exp_avg"), "state_keys must be 'exp_avg,exp_avg_sq'"),
    (dict(state_keys="exp_avg_sq,exp_avg"), "state_keys must be"),
    # amsgrad on: the kernels would read a third state row the table does not have
    (dict(field_values=[1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]), "exp_avg,exp_avg_sq,max_exp_avg_sq"),
    (dict(master_weights=True), "master_weights applies to float16 and bfloat16"),
    (dict(field_names=ADAM_FIELDS.replace("eps,", "")), "field_names must name each of"),
    (dict(field_names=ADAM_FIELDS + ",lr"), "field_names must name each of"),
    (dict(field_names=ADAM_FIELDS.replace("lr", "momentum")), "field_names must name each of"),
    (dict(field_values=ADAM_VALUES[:-1]), "9 field_values for 10 field_names"),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_malformed_arguments_raise_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        call(adam_args(**changes))


def test_sgd_takes_no_step_counters():
    params = [torch.randn(5)]
    with pytest.raises(ValueError, match="keeps no step counter"):
        torch.ops.fusedopt.update_("sgd", params, [torch.randn(5)], [torch.tensor(0.0)], [], "", SGD_FIELDS,
                                   [0.1, 0.0, 0.0, 0.0, 0.0, 0.0], False, False, None, None, None, "cpu")


def test_rmsprop_state_keys_follow_its_options():
    params = [torch.randn(5)]
    centered = [1e-2, 0.99, 1e-8, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'square_avg,grad_avg'"):
        torch.ops.fusedopt.update_("rmsprop", params, [torch.randn(5)], [torch.tensor(0.0)], [torch.zeros(5)],
                                   "square_avg", RMSPROP_FIELDS, centered, False, False, None, None, None, "cpu")


@pytest.mark.parametrize("changes,message", [
    (dict(grads=[torch.randn(5), torch.randn(6)]), "a grad has shape"),
    (dict(grads=[torch.randn(5), torch.randn(5, dtype=torch.float64)]), "a grad has dtype"),
    (dict(steps=[torch.tensor(0.0), torch.tensor(0, dtype=torch.int64)]), "state 'step' must be a float32 scalar"),
    (dict(steps=[torch.tensor(0.0), torch.zeros(2)]), "state 'step' must be a float32 scalar"),
    (dict(states=[torch.zeros(5)] * 3 + [torch.zeros(4)]), "state 'exp_avg_sq' of a param has shape"),
    (dict(states=[torch.zeros(5, dtype=torch.float64)] + [torch.zeros(5)] * 3), "state 'exp_avg' of a param has dtype"),
    (dict(found_inf=torch.zeros(2)), "found_inf must be a one-element float32 tensor"),
    (dict(grad_scale=torch.ones((), dtype=torch.float64)), "grad_scale must be a one-element float32 tensor"),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_tensors_that_cannot_serve_raise_runtime_error(changes, message):
    with pytest.raises(RuntimeError, match=message):
        call(adam_args(**changes))


def test_clip_coefficients_reach_the_kernels_in_the_math_type():
    """The kernels read clip_coef and tensor_clip in the update's math type (double for float64
    params, as torch scales float64 grads): a float32 one for a float64 batch is refused before
    any backend reads 8 bytes of a 4-byte tensor, and a float64 one for float32 params too. The
    op takes one coefficient for buckets of every dtype and gives each its own."""
    from fusedopt._layout import GradTransform
    cpu = torch.device("cpu")
    for coef, dtype in ((torch.tensor(0.5), torch.float64), (torch.tensor(0.5, dtype=torch.float64), torch.float32)):
        with pytest.raises(RuntimeError, match="clip_coef must be a one-element float"):
            GradTransform(clip_coef=coef).check(cpu, dtype)
        with pytest.raises(RuntimeError, match="tensor_clip must be a contiguous 1-D float"):
            GradTransform(tensor_clip=coef.reshape(1)).check(cpu, dtype)
        fitted = GradTransform(clip_coef=coef, tensor_clip=coef.reshape(1)).for_dtype(dtype)
        fitted.check(cpu, dtype)
        assert fitted.clip_coef.dtype == fitted.tensor_clip.dtype == (torch.float64 if dtype == torch.float64
                                                                      else torch.float32)
    results = []
    for coef in (torch.tensor(0.375), torch.tensor(0.375, dtype=torch.float64)):
        torch.manual_seed(0)
        args = adam_args(clip_coef=coef)
        args["params"] = [p.double() for p in args["params"]]
        args["grads"] = [g.double() for g in args["grads"]]
        args["states"] = [s.double() for s in args["states"]]
        call(args)
        results.append(args["params"])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_shared_state_tensors_are_refused():
    shared = torch.zeros(5)
    with pytest.raises(RuntimeError, match="share memory"):
        call(adam_args(states=[shared, torch.zeros(5), shared, torch.zeros(5)]))


def test_nothing_is_updated_when_one_bucket_is_malformed():
    """Every bucket is checked before any runs: a bad float64 bucket leaves the float32 one
    untouched."""
    params = [torch.randn(5), torch.randn(5, dtype=torch.float64)]
    before = params[0].clone()
    args = adam_args(params=params, grads=[torch.randn(5), torch.randn(5, dtype=torch.float64)],
                     states=[torch.zeros(5), torch.zeros(5, dtype=torch.float64), torch.zeros(5),
                             torch.zeros(4, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="has shape"):
        call(args)
    assert torch.equal(params[0], before)
