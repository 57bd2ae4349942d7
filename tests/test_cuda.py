"""The compiled CUDA kernels (backend="cuda") against torch.optim on a GPU.

Every optimizer x option x dtype of the suite's grid (_compare.ALL_CASES) runs 25 steps
beside torch.optim (KingmaBaAdam for optimized_update=True) on the same params and
gradients, on a bucket holding an empty tensor, odd sizes and a param at an odd address.

float64 results must equal torch's to rounding. For the other dtypes a float64 run on the
same inputs is the truth, and fusedopt's error against it must be at most about twice the
error of the reference in that dtype (flash-attention's rule), which survives the elements
where 25 steps of the update amplify rounding differences. The reference computes as the
kernels do: in float32, and for float16/bfloat16 with params and states rounded to the
dtype after every step (torch's own 16-bit path rounds every intermediate and is no
yardstick).
"""
import pytest
import torch

fusedopt = pytest.importorskip("fusedopt")
_C = pytest.importorskip("fusedopt._C")

from _compare import ALL_CASES, FLOAT64_LONG_RUN, REPRESENTATIVE_CASES, SCALAR_STATE_KEYS, SLACK  # noqa: E402  (imports fusedopt)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _C.build_info().get("cuda"), reason="fusedopt was built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FLOAT64_TOLERANCE = FLOAT64_LONG_RUN  # the suite's tolerance table, tests/_compare.py
STEPS = 25
# Sizes around the chunk (8,192 float32 elements) and vector (16 bytes) boundaries, an empty
# tensor and a matrix; the param at MISALIGNED starts one element past an aligned address.
SHAPES = [(0,), (1,), (7,), (33, 65), (4097,), (8193,), (70001,), (4099,)]
MISALIGNED = len(SHAPES) - 1


def case_id(case):
    name, options = case
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()]).replace(" ", "")


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- helpers
def make_params(shapes, dtype, seed, misaligned=()):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        values = torch.randn(shape, generator=generator, device="cuda")
        if i in misaligned:
            # A leaf whose storage starts one element past an aligned allocation: no
            # 16-byte vector access is possible for it.
            p = torch.empty(values.numel() + 1, device="cuda", dtype=dtype)[1:].view(shape)
            p.copy_(values)
        else:
            p = values.to(dtype)
        params.append(p.requires_grad_())
    return params


def make_grads(params, dtype, generator, misaligned=()):
    grads = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=generator, device="cuda").to(dtype)
        if i in misaligned:
            view = torch.empty(p.numel() + 1, device="cuda", dtype=dtype)[1:].view(p.shape)
            g = view.copy_(g)
        grads.append(g)
    return grads


def math_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def shadow(params, dtype):
    """Copies of the params in `dtype`, for a reference run."""
    return [p.detach().to(dtype).clone().requires_grad_() for p in params]


def round_to_storage(reference, reference_params, dtype):
    """What storing in `dtype` does to the reference's params and states."""
    if dtype not in (torch.float16, torch.bfloat16):
        return
    with torch.no_grad():
        for q in reference_params:
            q.copy_(q.to(dtype).to(q.dtype))
            for key, value in reference.state.get(q, {}).items():
                if key != "step" and key not in SCALAR_STATE_KEYS and isinstance(value, torch.Tensor):
                    value.copy_(value.to(dtype).to(value.dtype))


def scale_of(t):
    return max(1.0, float(t.detach().abs().max())) if t.numel() else 1.0


def assert_close_in_float64(ours, reference, what):
    tolerance = dict(FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE["atol"] * scale_of(reference))
    torch.testing.assert_close(ours.detach(), reference.detach(), **tolerance, msg=lambda m: f"{what}: {m}")


def max_error(tensors, truths):
    """Largest |a - truth| over all elements of all tensors, in float64 (NaN stays NaN)."""
    errors = [(a.detach().double() - t.detach()).abs().max() for a, t in zip(tensors, truths) if t.numel()]
    return float(torch.stack(errors).max()) if errors else 0.0


def assert_no_worse_than_reference(ours, reference, truth, dtype, what):
    """Over all tensors of the bucket: fusedopt's error against the float64 truth is at most
    twice the reference's, plus SLACK units of the largest value."""
    ours_error, reference_error = max_error(ours, truth), max_error(reference, truth)
    scale = max([scale_of(t) for t in truth] + [1.0])
    bound = 2 * reference_error + SLACK[dtype] * scale
    assert ours_error <= bound, (f"{what}: error {ours_error:.3g} against float64 exceeds twice the "
                                 f"reference's {reference_error:.3g} + slack in {dtype}")


class SideBySide:
    """A fused optimizer and its reference (and, below float64, a float64 truth) fed the same
    gradients step by step."""

    def __init__(self, fused_params, make_fused, make_reference, dtype):
        self.dtype = dtype
        self.params = fused_params
        self.fused = make_fused(fused_params)
        self.reference_params = shadow(fused_params, math_dtype(dtype))
        self.reference = make_reference(self.reference_params)
        self.truth_params = shadow(fused_params, torch.float64) if dtype != torch.float64 else None
        self.truth = make_reference(self.truth_params) if self.truth_params else None
        self.steps = 0

    def step(self, grads):
        runs = [(self.params, self.fused), (self.reference_params, self.reference)]
        if self.truth:
            runs.append((self.truth_params, self.truth))
        for params, optimizer in runs:
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
            optimizer.step()
        round_to_storage(self.reference, self.reference_params, self.dtype)
        self.steps += 1

    def check(self):
        """Params and every state tensor torch keeps; steps exactly."""
        compared = {"params": ([], [], [])}  # what -> (ours, reference, truth)
        for i, (p, q) in enumerate(zip(self.params, self.reference_params)):
            t = self.truth_params[i] if self.truth else None
            entries = [("params", p, q, t)]
            for key, value in self.reference.state[q].items():
                if key == "step":
                    assert float(self.fused.state[p]["step"]) == float(value) == self.steps, f"param {i}: step"
                elif isinstance(value, torch.Tensor):
                    truth = self.truth.state[t][key] if t is not None else None
                    entries.append((key, self.fused.state[p][key], value, truth))
            for what, ours, reference, truth in entries:
                if self.dtype == torch.float64:
                    assert_close_in_float64(ours, reference, f"param {i} {what}")
                else:
                    for collected, tensor in zip(compared.setdefault(what, ([], [], [])), (ours, reference, truth)):
                        collected.append(tensor)
        for what, (ours, reference, truth) in compared.items():
            if ours:
                assert_no_worse_than_reference(ours, reference, truth, self.dtype, what)


def run_side_by_side(runs, steps, seed, misaligned=()):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    for step in range(1, steps + 1):
        runs.step(make_grads(runs.params, runs.dtype, generator, misaligned))
        if step in (1, 2) or step % 8 == 0 or step == steps:
            runs.check()


# ----------------------------------------------------------------------------- tests
def test_cuda_backend_is_usable():
    assert _C.cuda_unusable_reason(torch.cuda.current_device()) == ""
    assert _C.cuda_unusable_reason(torch.cuda.device_count()) != ""  # no such device


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_matches_torch_optim(case, dtype):
    params = make_params(SHAPES, dtype, seed=1, misaligned=(MISALIGNED,))
    # torch.optim (single-tensor path), or KingmaBaAdam for optimized_update=True
    runs = SideBySide(params, lambda ps: case.fused(ps, "cuda"), case.expected, dtype)
    run_side_by_side(runs, STEPS, seed=2, misaligned=(MISALIGNED,))


def test_the_two_adam_forms_differ_where_eps_matters():
    params = make_params([(1000,)], torch.float64, seed=5)
    twin = [p.detach().clone().requires_grad_() for p in params]
    standard = fusedopt.Adam(params, eps=1e-2, backend="cuda")
    optimized = fusedopt.Adam(twin, eps=1e-2, optimized_update=True, backend="cuda")
    for p, q in zip(params, twin):
        p.grad = torch.full_like(p, 1e-3)
        q.grad = p.grad.clone()
    standard.step()
    optimized.step()
    assert not torch.allclose(params[0], twin[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_only_empty_tensors(dtype):
    params = [torch.zeros(0, device="cuda", dtype=dtype).requires_grad_(),
              torch.zeros(0, 5, device="cuda", dtype=dtype).requires_grad_()]
    optimizer = fusedopt.Adam(params, backend="cuda")
    for _ in range(3):
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    torch.cuda.synchronize()
    assert all(float(optimizer.state[p]["step"]) == 3 for p in params)


THOUSANDS_CASES = [
    ("Adam", {"amsgrad": True, "weight_decay": 0.01}),  # 6 addresses a tensor: several launches
    ("AdamW", {}),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"centered": True, "momentum": 0.5}),
]


@pytest.mark.parametrize("case", THOUSANDS_CASES, ids=case_id)
def test_over_a_thousand_tensors_in_one_bucket(case):
    name, options = case
    generator = torch.Generator().manual_seed(6)
    sizes = torch.randint(0, 3000, (1200,), generator=generator).tolist()
    shapes = [(n,) for n in sizes]
    misaligned = tuple(range(0, 1200, 7))
    params = make_params(shapes, torch.float32, seed=7, misaligned=misaligned)
    runs = SideBySide(params, lambda ps: getattr(fusedopt, name)(ps, **options, backend="cuda"),
                      lambda ps: getattr(torch.optim, name)(ps, **options), torch.float32)
    run_side_by_side(runs, 8, seed=8, misaligned=misaligned)


def test_launch_count_matches_the_plan():
    """A step over 1,200 tensors is the handful of launches the planner promises."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sizes = [(i * 37) % 5000 + 1 for i in range(1200)]
    params = make_params([(n,) for n in sizes], torch.float32, seed=9)
    optimizer = fusedopt.Adam(params, amsgrad=True, backend="cuda")
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # creates the state
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        optimizer.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in profiler.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        pytest.skip("the profiler recorded no CUDA kernels here")
    updates = sum("multi_tensor_kernel" in name for name in kernels)
    prologues = sum("prologue_kernel" in name for name in kernels)  # step counters and coefficients
    planned = _C.cuda_launch_plan(sizes, 6, 4)["launches"]  # param, grad, coefficients and 3 states
    assert updates == planned <= 3
    assert prologues == 1


def test_float16_tensor_over_two_to_the_31_elements():
    numel = 2**31 + 11
    tensors = 4  # param, grad, exp_avg, exp_avg_sq
    free, _ = torch.cuda.mem_get_info()
    if free < tensors * 2 * numel + (2 << 30):
        pytest.skip(f"needs {tensors * 2 * numel / 2**30:.1f} GiB of free GPU memory")
    # Every element holds the same (param, grad) pair except a few around 2^31 and at the
    # end, whose results must match the same pairs updated in a small tensor.
    special = torch.tensor([0, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, numel - 3, numel - 1], device="cuda")
    special_params = torch.linspace(-2, 2, len(special), device="cuda").to(torch.float16)
    special_grads = torch.linspace(0.5, -0.25, len(special), device="cuda").to(torch.float16)
    big = torch.full((numel,), 0.75, device="cuda", dtype=torch.float16).requires_grad_()
    big.grad = torch.full((numel,), -0.125, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        big[special] = special_params
        big.grad[special] = special_grads
    small = torch.cat([torch.tensor([0.75], device="cuda"), special_params.float()]).to(torch.float16)
    small.requires_grad_()
    small.grad = torch.cat([torch.tensor([-0.125], device="cuda"), special_grads.float()]).to(torch.float16)

    for optimizer in (fusedopt.Adam([big], lr=1e-2, backend="cuda"), fusedopt.Adam([small], lr=1e-2, backend="cuda")):
        optimizer.step()
        optimizer.step()
    torch.cuda.synchronize()
    tolerance = dict(rtol=2.0**-9, atol=2.0**-9)  # two units in the last place: vector and scalar paths may round apart
    torch.testing.assert_close(big.detach()[special], small.detach()[1:], **tolerance)
    with torch.no_grad():
        big[special] = small[0]
    bulk = small.detach()[0]
    torch.testing.assert_close(big.detach().min(), bulk, **tolerance)
    torch.testing.assert_close(big.detach().max(), bulk, **tolerance)


GRAPH_CASES = [
    ("Adam", {"weight_decay": 0.1}),
    ("AdamW", {"amsgrad": True, "optimized_update": True}),
    ("SGD", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"centered": True, "momentum": 0.9}),
]


@pytest.mark.parametrize("case", GRAPH_CASES, ids=case_id)
def test_step_captured_in_a_cuda_graph(case):
    """A captured step replays to exactly what eager steps compute."""
    name, options = case
    shapes = [(5000,), (3, 7), (1,), (8193,), (0,)]
    # Twins with the same values and the same alignment, so both take the same access paths.
    graphed_params = make_params(shapes, torch.float32, seed=10, misaligned=(1,))
    eager_params = make_params(shapes, torch.float32, seed=10, misaligned=(1,))
    graphed = getattr(fusedopt, name)(graphed_params, **options, backend="cuda")
    eager = getattr(fusedopt, name)(eager_params, **options, backend="cuda")
    generator = torch.Generator(device="cuda").manual_seed(11)
    static_grads = [torch.zeros_like(p) for p in graphed_params]
    for p, g in zip(graphed_params, static_grads):
        p.grad = g

    def next_grads():
        grads = make_grads(graphed_params, torch.float32, generator)
        for static, g, p in zip(static_grads, grads, eager_params):
            static.copy_(g)
            p.grad = g.clone()

    # Warm up on a side stream (state is created lazily), as torch.cuda.graph requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            next_grads()
            graphed.step()
            eager.step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step()
    for _ in range(5):
        next_grads()
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(graphed_params, eager_params):
        assert torch.equal(p, q)
        for key, value in eager.state[q].items():
            assert torch.equal(graphed.state[p][key], value), key
    if name != "SGD":
        assert float(graphed.state[graphed_params[0]]["step"]) == 3 + 5


def test_runs_on_the_given_stream():
    """The kernels queue on torch's current stream: behind a busy side stream, the step has
    not happened yet when another stream looks; after synchronising it has."""
    if not hasattr(torch.cuda, "_sleep"):
        pytest.skip("torch.cuda._sleep is unavailable")
    params = make_params([(100000,), (17,)], torch.float32, seed=12)
    optimizer = fusedopt.Adam(params, lr=0.1, backend="cuda")
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # creates the state
    torch.cuda.synchronize()
    before = [p.detach().clone() for p in params]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds of a busy stream
        optimizer.step()
    seen_meanwhile = [p.detach().clone() for p in params]  # on the default stream, not waiting for `side`
    torch.cuda.synchronize()
    for b, meanwhile, p in zip(before, seen_meanwhile, params):
        assert torch.equal(meanwhile, b)
        assert not torch.equal(p.detach(), b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_other_device_and_current_device_restored():
    torch.cuda.set_device(0)
    with torch.cuda.device(1):
        params = make_params([(4097,), (5,)], torch.float32, seed=13)
    runs = SideBySide(params, lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.9, backend="cuda"),
                      lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), torch.float32)
    for _ in range(3):
        runs.step([torch.ones_like(p) for p in params])
        assert torch.cuda.current_device() == 0
    runs.check()


# ----------------------------------------------------------------------------- training-loop features
# GradScaler's scale and found_inf and max_grad_norm's clip coefficient reach the kernels as
# device pointers: the kernels read them, and skip the whole step on an inf, without a sync.
def small_model(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to("cuda", dtype)


def model_loss(model, dtype=torch.float32):
    generator = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(64, 8, generator=generator, device="cuda").to(dtype)
    y = torch.randn(64, 3, generator=generator, device="cuda").to(dtype)
    return ((model(x) - y) ** 2).mean()


def max_difference(a, b):
    return max((p.double() - q.double()).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


TRAINING_OPTIMIZERS = {  # hyper-parameters, whether torch has fused=True on CUDA
    "Adam": ({"lr": 1e-2}, True),
    "AdamW": ({"lr": 1e-2}, True),
    "SGD": ({"lr": 1e-2, "momentum": 0.9, "nesterov": True}, True),
    "RMSprop": ({"lr": 1e-3, "centered": True, "momentum": 0.5}, False),
}


@pytest.mark.parametrize("name", list(TRAINING_OPTIMIZERS))
def test_grad_scaler_skips_inf_steps_on_the_device(name):
    hyper, torch_has_fused = TRAINING_OPTIMIZERS[name]
    ours, theirs = small_model(), small_model()
    opt_ours = getattr(fusedopt, name)(ours.parameters(), backend="cuda", **hyper)
    opt_theirs = getattr(torch.optim, name)(theirs.parameters(), **({"fused": True} if torch_has_fused else {}),
                                            **hyper)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**10) for _ in range(2)]
    inf_steps = {3, 4, 9}
    for step in range(14):
        for model, opt, scaler in ((ours, opt_ours, scalers[0]), (theirs, opt_theirs, scalers[1])):
            opt.zero_grad()
            scaler.scale(model_loss(model)).backward()
            if step in inf_steps:
                model[0].weight.grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            if step in inf_steps:  # a skipped step leaves every param untouched
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**10 / 2**3
    # torch's fused kernels and ours differ in rounding only (plain torch for RMSprop)
    assert max_difference(ours, theirs) < 1e-5
    if name != "SGD":  # the skipped steps are not counted
        assert opt_ours.state[ours[0].weight]["step"].item() == 14 - len(inf_steps)


@pytest.mark.parametrize("name", list(TRAINING_OPTIMIZERS))
def test_max_grad_norm_equals_torch_clip_then_step(name):
    hyper, _ = TRAINING_OPTIMIZERS[name]
    ours, theirs = small_model(), small_model()
    opt_ours = getattr(fusedopt, name)(ours.parameters(), backend="cuda", max_grad_norm=0.05, **hyper)
    opt_theirs = getattr(torch.optim, name)(theirs.parameters(), **hyper)
    for _ in range(20):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model_loss(model).backward()
        assert torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05) > 0.05  # the clip is active
        opt_ours.step()
        opt_theirs.step()
    assert max_difference(ours, theirs) < 1e-5


def assert_mostly_close(actual, expected, what, rtol=1e-4, fraction=1e-3):
    """Close in all but a `fraction` of the elements. Where a gradient cancels against the
    weight decay to rounding level, Adam's m / (sqrt(v) + eps) is decided by that rounding,
    and two correct float32 implementations then part by up to a learning rate; a kernel
    reading or writing the wrong memory mismatches nearly everywhere."""
    if expected.numel() == 0:
        return
    close = torch.isclose(actual, expected, rtol=rtol, atol=rtol * scale_of(expected))
    mismatched = float((~close).double().mean())
    assert mismatched <= fraction, f"{what}: {mismatched:.2%} of the elements differ beyond rtol={rtol}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_master_weights_match_the_reference_backend(case, dtype):
    """16-bit params with float32 master copies and states: the CUDA kernels read and write
    the float32 rows (at vector width beside the 16-bit ones) as the reference does."""
    params = make_params(SHAPES, dtype, seed=14, misaligned=(MISALIGNED,))
    twins = make_params(SHAPES, dtype, seed=14, misaligned=(MISALIGNED,))
    ours = case.fused(params, "cuda", master_weights=True)
    reference = case.fused(twins, "reference", master_weights=True)
    generator = torch.Generator(device="cuda").manual_seed(15)
    for _ in range(10):
        for p, q, g in zip(params, twins, make_grads(params, dtype, generator, (MISALIGNED,))):
            p.grad, q.grad = g, g.clone()
        ours.step()
        reference.step()
    for i, (p, q) in enumerate(zip(params, twins)):
        mine, theirs = ours.state[p], reference.state[q]
        assert set(mine) == set(theirs) and "master_param" in mine, f"param {i}"
        for key, value in theirs.items():
            if key == "step":
                assert float(mine[key]) == float(value) == 10
                continue
            if key in SCALAR_STATE_KEYS:  # float32 scalars, computed alike
                assert mine[key].dtype == torch.float32, f"param {i} {key}"
                assert abs(float(mine[key]) - float(value)) <= 1e-6 * abs(float(value)), f"param {i} {key}"
                continue
            assert mine[key].dtype == torch.float32, f"param {i} state {key}"
            assert_mostly_close(mine[key], value, f"param {i} state {key}")
        # the 16-bit param is its master copy rounded once
        assert torch.equal(p.detach(), mine["master_param"].to(dtype)), f"param {i}"



# ----------------------------------------------------------------------------- LAMB: the CPU's bits
@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.float64, False), (torch.bfloat16, True),
                                           (torch.float16, False)], ids=["f32", "f64", "bf16-master", "f16"])
def test_lamb_same_bits_as_the_cpu_backend(dtype, master):
    """LAMB's norm pass and trust-ratio update (csrc/cuda/norms.cuh, update.cuh) give the CPU
    kernels' bits on a GPU too, over 21 steps on tensors past one 65,536-element reduction
    block, with per-tensor clipping (its sums come from the reduction kernels, which share the
    CPU's order). tests/test_cuda_host.py shows the sources do on the host; this shows nvcc's
    code and the GPU's arithmetic do. (No max_grad_norm: its global norm adds the per-tensor
    sums with torch's .sum(), whose order differs between devices.)"""
    shapes = [(0,), (1,), (131075,), (65536,), (65537,), (300, 7), (4099,)]
    generator = torch.Generator().manual_seed(3)
    values = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    on_gpu = [torch.nn.Parameter(v.cuda()) for v in values]
    on_cpu = [torch.nn.Parameter(v.clone()) for v in values]
    options = dict(lr=1e-2, weight_decay=0.1, clip_grad_norm_per_tensor=0.5, master_weights=master)
    ours, theirs = fusedopt.LAMB(on_gpu, backend="cuda", **options), fusedopt.LAMB(on_cpu, backend="cpu", **options)
    for _ in range(21):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
        for p, q, g in zip(on_gpu, on_cpu, grads):
            p.grad, q.grad = g.cuda(), g.clone()
        ours.step()
        theirs.step()
    for i, (p, q) in enumerate(zip(on_gpu, on_cpu)):
        assert torch.equal(p.detach().cpu(), q.detach()), f"param {i}"
        assert set(ours.state[p]) == set(theirs.state[q]), f"param {i}"
        for key, value in theirs.state[q].items():
            assert torch.equal(ours.state[p][key].cpu(), value), f"param {i} state {key}"
