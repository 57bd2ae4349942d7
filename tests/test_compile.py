"""torch.compile and torch.library: the step is a real op, traced without graph breaks."""
import copy

import pytest
import torch

import fusedopt
import fusedopt._ops  # noqa: F401  registers torch.ops.fusedopt.update_ (else only the first compiled step does)


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


X, Y = torch.randn(32, 8, generator=torch.Generator().manual_seed(0)), torch.randn(32, 2)


def _train_step(model, optimizer):
    optimizer.zero_grad(set_to_none=True)
    loss = ((model(X) - Y) ** 2).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


CASES = {
    "AdamW": (fusedopt.AdamW, {"lr": 1e-2}),
    "Adam-amsgrad-optimized": (fusedopt.Adam, {"lr": 1e-2, "amsgrad": True, "optimized_update": True}),
    "SGD-momentum": (fusedopt.SGD, {"lr": 1e-2, "momentum": 0.9}),
    "RMSprop-centered": (fusedopt.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    "AdamW-clipped": (fusedopt.AdamW, {"lr": 1e-2, "max_grad_norm": 0.01}),
    # per-param scalar states (eta and mu; mu_product) travel through the op with the states
    "ASGD-averaging": (fusedopt.ASGD, {"lr": 1e-2, "t0": 2.0, "lambd": 0.1}),
    "NAdam-decoupled": (fusedopt.NAdam, {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    # bf16 state tensors go through the op as they are (the op is told their dtype)
    "AdamW-bf16-states": (fusedopt.AdamW, {"lr": 1e-2, "state_dtype": torch.bfloat16}),
    "SGD-bf16-states": (fusedopt.SGD, {"lr": 1e-2, "momentum": 0.9, "state_dtype": torch.bfloat16}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_step_equals_eager_step(case, backend):
    """Only optimizer.step() compiled, grads computed eagerly: the op runs the same kernels
    on the same grads, so the params and state must be identical."""
    _compiled_step_equals_eager_step(case, backend, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_compiled_clipped_step_equals_eager_step(seed, backend):
    """The clip norm of the compiled step is the eager step's, bit for bit: both sum squares
    per bucket through Backend.sum_of_squares (they used float32 and float64 per-tensor
    norms, and differed bitwise in 2 of these 5 seeds on the reference backend)."""
    _compiled_step_equals_eager_step("AdamW-clipped", backend, seed)


def _compiled_step_equals_eager_step(case, backend, seed):
    cls, hyper = CASES[case]
    torch._dynamo.reset()
    torch.manual_seed(seed)
    eager_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    compiled_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    compiled_model.load_state_dict(eager_model.state_dict())
    eager_opt = cls(eager_model.parameters(), backend=backend, **hyper)
    compiled_opt = cls(compiled_model.parameters(), backend=backend, **hyper)
    compiled_step = torch.compile(compiled_opt.step)
    for _ in range(4):
        for model in (eager_model, compiled_model):
            model.zero_grad(set_to_none=True)
            ((model(X) - Y) ** 2).mean().backward()
        eager_opt.step()
        compiled_step()
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        for key, value in eager_opt.state[p].items():
            torch.testing.assert_close(compiled_opt.state[q][key], value, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_training_step_matches_eager(case):
    """The whole training step compiled. Inductor fuses the forward and backward passes
    and so rounds the grads differently from eager (seen: 2e-7 after 4 steps), and Adam's
    normalised update can amplify that where a grad is near zero: hence the tolerance."""
    cls, hyper = CASES[case]
    eager_model, compiled_model = _model(), _model()
    eager_opt, compiled_opt = cls(eager_model.parameters(), **hyper), cls(compiled_model.parameters(), **hyper)
    compiled = torch.compile(_train_step)
    for _ in range(4):
        eager_loss = _train_step(eager_model, eager_opt)
        compiled_loss = compiled(compiled_model, compiled_opt)
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert eager_opt.state_dict()["state"].keys() == compiled_opt.state_dict()["state"].keys()


@pytest.mark.slow
def test_fusedopt_causes_no_graph_break():
    model = _model()
    optimizer = fusedopt.AdamW(model.parameters())
    _train_step(model, optimizer)  # state exists, as after the first step of a real run

    def step_only():
        optimizer.step()

    explanation = torch._dynamo.explain(step_only)()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_update_op_passes_opcheck():
    param = torch.randn(5, requires_grad=True)
    grad = torch.randn(5)
    args = (
        "adam", [param], [grad], [torch.tensor(0.0)], [torch.zeros(5), torch.zeros(5)], "exp_avg,exp_avg_sq",
        "lr,beta1,beta2,eps,weight_decay,amsgrad,maximize,decoupled_weight_decay,optimized_update,absolute_weight_decay",
        [1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], False, False, None, None, None, "cpu",
    )
    torch.library.opcheck(torch.ops.fusedopt.update_.default, args)
    torch.library.opcheck(torch.ops.fusedopt.update_.default, (*args, 0.5))  # clip_grad_value's bound
    torch.library.opcheck(torch.ops.fusedopt.update_reading_grads_.default, args)
    # A grad_scale writes the grads back, which the reading op does not declare.
    scaled = (*args[:10], torch.tensor(2.0), torch.zeros(1), *args[12:])
    with pytest.raises(ValueError, match="call fusedopt::update_"):
        torch.ops.fusedopt.update_reading_grads_(*scaled)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["AdamW", "SGD-momentum", "AdamW-bf16-states"])
def test_a_compiled_step_takes_grads_that_are_views_of_one_buffer(case):
    """Grads as views of one flat buffer (DDP's gradient_as_bucket_view, flat-buffer trainers):
    declared as mutated by the op they alias one another, and inductor's functionalisation
    raised an AssertionError at the first compiled step. Without a grad scaler the op only
    reads them: the compiled steps now equal the eager ones, bit for bit."""
    cls, hyper = CASES[case]
    shapes = [(4, 8), (16,), (3, 5)]
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g) for s in shapes]
    runs = []
    for compiled in (False, True):
        params = [torch.nn.Parameter(v.clone()) for v in start]
        optimizer = cls(params, **hyper)
        runs.append((params, torch.compile(optimizer.step) if compiled else optimizer.step))
    buffer = torch.zeros(sum(torch.Size(s).numel() for s in shapes))
    for _ in range(4):
        buffer.copy_(torch.randn(buffer.numel(), generator=g))
        for params, step in runs:
            offset = 0
            for p in params:
                p.grad = buffer[offset:offset + p.numel()].view(p.shape)
                offset += p.numel()
            step()
        for eager, compiled in zip(runs[0][0], runs[1][0]):
            assert torch.equal(eager, compiled)


# ----------------------------------------------------------------------------- steps the op does not take
def _embedding_case(cls, kwargs):
    def make():
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(64, 64, sparse=True)  # 4,096 elements: int8 states quantize it
        return embedding, cls(embedding.parameters(), **kwargs)

    def grads(embedding, step):
        embedding(torch.tensor([step % 64, (3 * step + 1) % 64])).square().sum().backward()
    return make, grads


def _dense_case(cls, kwargs):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
        return model, cls(model.parameters(), **kwargs)

    def grads(model, step):
        ((model(X.repeat(1, 8) * (1 + 0.1 * step)) - Y) ** 2).mean().backward()
    return make, grads


OUTSIDE_THE_GRAPH = {  # steps compiled_step does not serve: they run eagerly, untraced
    "Adafactor": _dense_case(fusedopt.Adafactor, {}),
    "AdamW-int8-states": _dense_case(fusedopt.AdamW, {"lr": 1e-2, "state_dtype": "int8"}),
    "SparseAdam": _embedding_case(fusedopt.SparseAdam, {"lr": 1e-2}),
    "Adam-lazy-mode": _embedding_case(fusedopt.Adam, {"lr": 1e-2, "lazy_mode": True}),
    "SGD-sparse-grads": _embedding_case(fusedopt.SGD, {"lr": 1e-2, "momentum": 0.9}),
    "Adagrad-sparse-grads": _embedding_case(fusedopt.Adagrad, {"lr": 1e-2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OUTSIDE_THE_GRAPH))
def test_steps_the_op_does_not_take_run_eagerly_in_a_compiled_region(case):
    """Adafactor, 8-bit states, lazy mode and sparse grads have no path through the op: inside
    torch.compile their step runs eagerly (a graph break) and gives the eager numbers. Traced
    instead, Adafactor and 8-bit states failed at the second step (guards on weak references),
    lazy mode's refusal was swallowed by dynamo, and sparse grads were refused."""
    make, grads = OUTSIDE_THE_GRAPH[case]
    (eager_model, eager), (compiled_model, compiled) = make(), make()
    torch._dynamo.reset()
    compiled_step = torch.compile(compiled.step)
    for step in range(3):
        for model in (eager_model, compiled_model):
            model.zero_grad(set_to_none=True)
            grads(model, step)
        eager.step()
        compiled_step()
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


@pytest.mark.slow
def test_grad_scaler_skipping_sgds_first_step_in_a_compiled_step():
    """GradScaler skips a first step with inf grads: SGD's momentum buffer must then start as
    the next grad (torch's rule), as in the eager step, not at zero (0.5 x the grad with
    dampening 0.5, as the traced op made it)."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        optimizer = fusedopt.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
        torch._dynamo.reset()
        if compiled:
            optimizer.step = torch.compile(optimizer.step)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for step in range(3):
            optimizer.zero_grad()
            loss = (model(X[:, :6] * (1 + 0.1 * step)) ** 2).mean()
            scaler.scale(loss * float("inf") if step == 0 else loss).backward()
            scaler.step(optimizer)
            scaler.update()
        results.append(model.weight.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan")])
def test_clip_option_spoiled_after_construction_is_refused_in_a_compiled_step(bad):
    model = _model()
    optimizer = fusedopt.AdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0)
    _train_step(model, optimizer)
    optimizer.param_groups[0]["max_grad_norm"] = bad
    before = [p.detach().clone() for p in model.parameters()]
    ((model(X) - Y) ** 2).mean().backward()
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="max_grad_norm"):
        torch.compile(optimizer.step)()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.slow
@pytest.mark.parametrize("lr", [1e-2, torch.tensor(1e-2)], ids=["float", "tensor"])
def test_a_scheduled_lr_does_not_recompile_the_step(lr):
    """A scheduler changes the lr every step: the compiled step must not recompile for each
    value (it did, for float and tensor lr alike, until dynamo's recompile limit sent every
    fusedopt step back to eager). A tensor lr is read when the op runs; a float one becomes a
    graph input after one recompile, as for torch.optim."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    eager_model, compiled_model = _model(), _model()
    eager = fusedopt.AdamW(eager_model.parameters(), lr=lr.clone() if isinstance(lr, torch.Tensor) else lr)
    compiled = fusedopt.AdamW(compiled_model.parameters(), lr=lr)
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10) for o in (eager, compiled)]
    torch._dynamo.reset()
    compiled_step = torch.compile(compiled.step, backend=counting_backend)
    counts = []
    for _ in range(8):
        for model in (eager_model, compiled_model):
            model.zero_grad(set_to_none=True)
            ((model(X) - Y) ** 2).mean().backward()
        eager.step()
        compiled_step()
        for scheduler in schedulers:
            scheduler.step()
        counts.append(len(graphs))
    assert counts[2:] == [counts[2]] * 6, counts  # nothing compiled after the third step
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


@pytest.mark.slow
def test_checkpoint_with_numeric_steps_continues_in_a_compiled_step():
    """Old checkpoints hold `step` as a number; torch's load makes it a tensor, and so does
    fusedopt's now, so the compiled step can pass it to the op (it failed there)."""
    torch.manual_seed(0)
    source = torch.nn.Linear(8, 2)
    reference = torch.optim.Adam(source.parameters(), foreach=False)
    (source(X) ** 2).mean().backward()
    reference.step()
    checkpoint = reference.state_dict()
    for entry in checkpoint["state"].values():
        entry["step"] = 1
    results = []
    for compiled in (False, True):
        model = torch.nn.Linear(8, 2)
        model.load_state_dict(source.state_dict())
        optimizer = fusedopt.Adam(model.parameters())
        optimizer.load_state_dict(copy.deepcopy(checkpoint))  # the load shares its tensors
        assert isinstance(optimizer.state[model.weight]["step"], torch.Tensor)
        (model(X) ** 2).mean().backward()
        torch._dynamo.reset()
        (torch.compile(optimizer.step) if compiled else optimizer.step)()
        results.append(model.weight.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


@pytest.mark.slow
def test_an_integer_tensor_lr_steps_as_in_the_eager_step():
    results = []
    for compiled in (False, True):
        p = torch.nn.Parameter(torch.ones(3))
        optimizer = fusedopt.SGD([p], lr=torch.tensor(1))
        p.grad = torch.ones(3)
        torch._dynamo.reset()
        (torch.compile(optimizer.step) if compiled else optimizer.step)()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


@pytest.mark.slow
def test_a_partly_lost_state_raises_key_error_in_a_compiled_step():
    """The compiled path creates missing state itself (split_fresh): a trained param that
    lost one key raises torch's KeyError there too, rather than restart that state at zero."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    optimizer = fusedopt.Adam(model.parameters())
    (model(X) ** 2).mean().backward()
    optimizer.step()
    del optimizer.state[model.weight]["exp_avg_sq"]
    before = model.weight.detach().clone()
    torch._dynamo.reset()
    with pytest.raises(KeyError, match="exp_avg_sq"):
        torch.compile(optimizer.step)()
    assert torch.equal(model.weight.detach(), before)


@pytest.mark.slow
def test_a_first_compiled_step_creates_state_without_recompiling():
    """The first step creates the state: traced, that creation compiled once per param (its
    guards hold each param's identity), up to dynamo's recompile limit. It runs eagerly now:
    no recompile, and the same numbers as the eager steps."""
    results = []
    for compiled in (False, True):
        model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])  # 12 params
        torch.manual_seed(3)
        for p in model.parameters():
            p.data.copy_(torch.randn_like(p))
        optimizer = fusedopt.Adam(model.parameters(), lr=1e-2)
        torch._dynamo.reset()
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(3):
                optimizer.zero_grad()
                (model(X) ** 2).mean().backward()
                step()
        results.append([p.detach().clone() for p in model.parameters()])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
