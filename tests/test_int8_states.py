"""state_dtype="int8" (issue 13): blockwise dynamic 8-bit optimizer states (Dettmers et al.
2022), specified by fusedopt/_quantize.py and run by the reference backend (the compiled CPU kernels
against it: tests/test_int8_kernels.py).

The format: the code tables, the round-trip error bound per block, the rounding rule and
its edge blocks (all zeros, one huge value, a short last block, NaN); the optimizers: the
states each keeps, one requantization of the float32 update per step, 25 steps of every
supported kind against a float32-state run, GradScaler's skipped step, max_grad_norm,
master weights, param groups, checkpoints across state dtypes, to_torch_state_dict, and the
refusals (kinds, dtypes, backends without 8-bit kernels, torch.compile).
"""
import copy
import warnings

import pytest
import torch

import fusedopt
from fusedopt import _quantize as Q
from fusedopt._layout import MASTER_KEY
from fusedopt.optim import _spec

# Every supported kind, with options that make all of its states appear.
KINDS = ("adam", "sgd", "rmsprop", "lion", "adagrad", "adadelta", "adamax", "nadam", "radam", "lamb")
OPTIONS = {"sgd": dict(momentum=0.9), "rmsprop": dict(momentum=0.9), "adam": dict(amsgrad=True)}
LR = {"sgd": 1e-2, "adagrad": 1e-2, "adadelta": 1.0, "rmsprop": 1e-3, "lion": 1e-4}
# Two quantized tensors (one a whole number of blocks, one not) and one small (float32 states).
SHAPES = ((64, 96), (4100,), (7, 5))


@pytest.fixture(autouse=True)
def _quiet_auto():
    """backend='auto' on the CPU warns once that it runs 8-bit states on the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _params(dtype=torch.float32, shapes=SHAPES):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for shape in shapes]


def _set_grads(params, step, scale=1.0):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = ((torch.randn(p.shape, generator=g) + 0.5 * p.detach().float()) * scale).to(p.dtype)


def _make(kind, params, **extra):
    options = {"lr": LR.get(kind, 1e-3), **OPTIONS.get(kind, {}), **extra}
    return _spec._CLASSES[kind](params, **options)


def _run(kind, steps=25, dtype=torch.float32, **extra):
    params = _params(dtype)
    opt = _make(kind, params, **extra)
    for step in range(steps):
        _set_grads(params, step)
        opt.step()
    return params, opt


# ----------------------------------------------------------------- the format
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_tables(signed):
    table, boundaries = Q.code_table(signed), Q.code_boundaries(signed)
    assert table.dtype == torch.float32 and table.shape == (256,)
    assert bool((table[1:] > table[:-1]).all()), "sorted, no duplicates"
    assert table[-1].item() == 1.0 and (table == 0).sum().item() == 1
    assert table[0].item() == (-1.0 if signed else 0.0)
    if signed:  # 127 magnitudes with both signs, 0, and +1e-7
        positive = table[table > 0]
        assert torch.equal(-table[table < 0].flip(0), positive[1:])
        assert positive[0].item() == torch.tensor(1e-7).item()
    # the dynamic tree: per decade (10^-e-1, 10^-e], 2^(f - e) values with f fraction bits at e = 0
    top = 6 if signed else 7
    for e in range(top + 1):
        decade = ((table > 10.0 ** -(e + 1) * 1.0000001) & (table <= 10.0 ** -e * 1.0000001)).sum().item()
        assert decade == 2 ** (top - e), (e, decade)
    # boundaries: the exact midpoints, rounded once to float32
    expected = ((table.double()[:-1] + table.double()[1:]) / 2).float()
    assert torch.equal(boundaries, expected)
    assert table[Q.zero_code(signed)].item() == 0.0


def _largest_half_gap(signed):
    table = Q.code_table(signed).double()
    return (table[1:] - table[:-1]).max().item() / 2


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1.0, 1e4])
def test_round_trip_error_bound_per_block(signed, scale):
    """|x - dequantize(quantize(x))| <= (half the largest gap between neighbouring codes) *
    absmax of x's block, plus float32 rounding of q = x / absmax and of the product (2^-23 of
    absmax); tighter, per element: half the gap on the side of the chosen code."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256 * 9 + 100, generator=g) * scale
    x[:256] *= 1e-4  # a block of much smaller values than its neighbours
    if not signed:
        x = x.abs()
    codes, absmax = Q.quantize(x, signed)
    assert codes.dtype == torch.uint8 and absmax.shape == (10,)
    back = Q.dequantize(codes, absmax, signed)
    per_element = absmax.repeat_interleave(256)[:x.numel()].double()
    slack = 2.0 ** -23 * per_element
    error = (x.double() - back.double()).abs()
    assert bool((error <= _largest_half_gap(signed) * per_element + slack).all())
    table = Q.code_table(signed).double()
    padded = torch.cat([table[:1], table, table[-1:]])
    c = codes.long() + 1
    local = torch.maximum(padded[c] - padded[c - 1], padded[c + 1] - padded[c]) / 2
    assert bool((error <= local * per_element + slack).all())
    # absmax is the max |x| of each block, and each block's largest element is stored exactly
    for b in range(10):
        block = x[256 * b:256 * (b + 1)]
        assert absmax[b].item() == block.abs().max().item()
        k = int(block.abs().argmax())
        assert back[256 * b + k].item() == block[k].item()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_nearest_code_ties_to_the_lower_index(signed):
    """The code is the nearest table value; a value exactly between two codes takes the lower
    index. The block holds 1.0, so absmax = 1 and q = x exactly."""
    table, boundaries = Q.code_table(signed), Q.code_boundaries(signed)
    g = torch.Generator().manual_seed(3)
    low = -1.0 if signed else 0.0
    # three blocks, each holding 1.0: random values, the boundaries, the table itself
    x = torch.cat([torch.ones(1), torch.empty(255).uniform_(low, 1.0, generator=g), torch.ones(1), boundaries, table])
    codes, absmax = Q.quantize(x, signed)
    assert bool((absmax == 1).all())
    q = x.double()
    distance = (q[:, None] - table.double()[None, :]).abs()
    nearest = distance.min(dim=1).values
    chosen = distance.gather(1, codes.long()[:, None]).squeeze(1)
    # nearest up to the rounding of the float32 boundaries
    assert bool((chosen <= nearest + 2.0 ** -24).all())
    ties = codes[257:512].long()
    assert torch.equal(ties, torch.arange(255)), "a boundary goes to the lower code"
    assert torch.equal(codes[512:].long(), torch.arange(256)), "every table value is its own code"


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_all_zero_block_and_one_huge_value(signed):
    x = torch.randn(256 * 3, generator=torch.Generator().manual_seed(1))
    x = x if signed else x.abs()
    x[256:512] = 0
    x[600] = 1e30
    codes, absmax = Q.quantize(x, signed)
    assert absmax[1].item() == 0
    assert bool((codes[256:512] == Q.zero_code(signed)).all())
    back = Q.dequantize(codes, absmax, signed)
    assert bool((back[256:512] == 0).all())
    assert absmax[2].item() == x[600].item() and back[600].item() == x[600].item()
    # every other value of that block is below 1e-7 of the absmax: stored as 0
    others = torch.cat([back[512:600], back[601:]])
    assert bool((others == 0).all())
    assert torch.equal(back[:256], Q.dequantize(*Q.quantize(x[:256], signed), signed)), "blocks are independent"


def test_non_finite_values_poison_their_block_only():
    x = torch.ones(512)
    x[3] = float("nan")
    codes, absmax = Q.quantize(x, True)
    assert absmax[0].isnan() and codes[3].item() == 0
    back = Q.dequantize(codes, absmax, True)
    assert bool(back[:256].isnan().all()) and bool((back[256:] == 1).all())


# ----------------------------------------------------------------- the optimizers
@pytest.mark.parametrize("numel, quantized", [(4095, False), (4096, True), (4097, True), (256 * 20 + 1, True)])
def test_which_tensors_are_quantized(numel, quantized):
    p = torch.randn(numel, requires_grad=True)
    opt = fusedopt.Adam([p], lr=1e-2, state_dtype="int8", backend="reference")
    p.grad = torch.randn(numel)
    opt.step()
    state = opt.state[p]
    if not quantized:
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["exp_avg"].dtype == torch.float32
        return
    assert set(state) == {"step", "exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"}
    assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg"].shape == p.shape
    assert state["exp_avg_absmax"].dtype == torch.float32
    assert state["exp_avg_absmax"].shape == (-(-numel // 256),)
    # the last (short) block's absmax is over its own elements
    m = 0.1 * p.grad
    assert state["exp_avg_absmax"][-1].item() == m[256 * (state["exp_avg_absmax"].numel() - 1):].abs().max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_states_and_their_codes(kind):
    params, opt = _run(kind, steps=2, state_dtype="int8", backend="reference")
    keys = opt.state_keys(opt.param_groups[0])
    big, small = opt.state[params[0]], opt.state[params[2]]
    for key in keys:
        assert big[key].dtype == torch.uint8 and big[Q.scale_key(key)].dtype == torch.float32
        assert small[key].dtype == torch.float32 and Q.scale_key(key) not in small
        if Q.STATE_CODES[key] == Q.UNSIGNED:  # non-negative states: the unsigned code
            assert bool((Q.dequantize(big[key], big[Q.scale_key(key)], False) >= 0).all())


def _restart(opt32, opt8, params32, params8, keys):
    """opt32's params and states set to opt8's (dequantized): the float32 step from there."""
    for p32, p8 in zip(params32, params8):
        p32.data.copy_(p8.detach())
        s8 = opt8.state[p8]
        if not s8:
            continue
        for key, value in s8.items():
            if key.endswith(Q.SCALE_SUFFIX):
                continue
            if value.dtype == torch.uint8:
                value = Q.dequantized_like(value, s8[Q.scale_key(key)], key)
            opt32.state[p32][key] = value.clone()


@pytest.mark.parametrize("extra", [{}, {"max_grad_norm": 0.5}, {"weight_decay": 0.1}], ids=["plain", "clip", "wd"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_requantization_of_the_float32_update(kind, extra):
    """An 8-bit step is the float32 step from the dequantized states, whose new states are then
    quantized once: params equal bit for bit, codes and scales equal quantize(new states)."""
    if kind == "adagrad" and "weight_decay" in extra:
        extra = {}
    params8 = _params()
    params32 = [p.detach().clone().requires_grad_() for p in params8]
    opt8 = _make(kind, params8, state_dtype="int8", backend="reference", **extra)
    opt32 = _make(kind, params32, backend="reference", **extra)
    keys = opt8.state_keys(opt8.param_groups[0])
    for step in range(4):
        _restart(opt32, opt8, params32, params8, keys)
        _set_grads(params8, step)
        _set_grads(params32, step)
        opt8.step()
        opt32.step()
        for p8, p32 in zip(params8, params32):
            assert torch.equal(p8, p32), (kind, step)
            s8, s32 = opt8.state[p8], opt32.state[p32]
            for key in keys:
                if p8.numel() >= Q.MIN_QUANTIZED_NUMEL:
                    codes, absmax = Q.quantized_like(s32[key], key)
                    assert torch.equal(s8[key], codes), (kind, key, step)
                    assert torch.equal(s8[Q.scale_key(key)], absmax), (kind, key, step)
                else:
                    assert torch.equal(s8[key], s32[key])


@pytest.mark.parametrize("kind", KINDS)
def test_training_follows_float32_states(kind):
    """25 steps (random grads plus a pull towards 0): each quantized param's distance from the
    float32-state run is under 10% of how far that run moved it (measured: 0.4% Adagrad to
    3.6% Lion, whose sign update flips where the momentum is near 0); small tensors, whose
    states stay float32, are bit for bit."""
    params8, opt8 = _run(kind, state_dtype="int8", backend="reference")
    params32, _ = _run(kind, backend="reference")
    start = _params()
    for p8, p32, p0 in zip(params8, params32, start):
        if p8.numel() < Q.MIN_QUANTIZED_NUMEL:
            assert torch.equal(p8, p32)
        else:
            assert ((p8 - p32).norm() / (p32 - p0).norm()).item() < 0.1, kind


def test_backend_auto_runs_int8_on_the_first_backend_with_8_bit_kernels():
    """'auto' runs the quantized params on the cpu kernels (the reference, with a warning
    saying why, where fusedopt._C lacks them), with that backend's bits; the small params
    (float32 states) go to the compiled kernels too."""
    fusedopt.backends._resolved.clear()
    chosen = fusedopt.backends.choose("auto", torch.device("cpu"), "int8_states").name
    assert chosen in ("cpu", "reference")
    params, opt = _run("adam", steps=3, state_dtype="int8")
    named, nopt = _run("adam", steps=3, state_dtype="int8", backend=chosen)
    for a, b in zip(params, named):
        if a.numel() >= Q.MIN_QUANTIZED_NUMEL or chosen == "cpu":
            assert torch.equal(a, b)
            for key, value in opt.state[a].items():
                assert torch.equal(value, nopt.state[b][key]), key
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _without_int8_kernels():
    """The named backends whose kernels do not include 8-bit states (none once every backend
    runs them: cpu and cuda since the compiled kernels, triton since tests/test_triton_int8.py)."""
    names = []
    for name in ("cuda", "triton", "cpu"):
        try:
            backend = fusedopt.backends.get(name)
        except RuntimeError:  # triton not installed
            continue
        if "int8_states" not in backend.kernels:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _without_int8_kernels())
def test_named_backend_without_int8_kernels_is_refused(name):
    reason = fusedopt.backends.unusable_reason(name, torch.device("cpu"))
    if reason:
        pytest.skip(f"backend {name!r} does not run here: {reason}")
    with pytest.raises(RuntimeError, match=rf"backend '{name}' has no int8_states kernels"):
        fusedopt.Adam(_params(), state_dtype="int8", backend=name)
    # a group of small tensors only has no 8-bit states: the backend runs it
    opt = fusedopt.Adam([torch.zeros(10, requires_grad=True)], state_dtype="int8", backend=name)
    with pytest.raises(RuntimeError, match="int8_states"):
        opt.add_param_group({"params": [torch.zeros(5000, requires_grad=True)]})


def test_grad_scaler_skip_leaves_codes_unchanged():
    params = _params()
    opt = fusedopt.AdamW(params, lr=1e-2, state_dtype="int8", backend="reference")
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaler.scale(torch.ones(()))
    for step in range(5):
        _set_grads(params, step, scale=scaler.get_scale())
        if step in (2, 3):
            params[1].grad[5] = float("nan") if step == 2 else float("inf")
            before = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
            weights = [p.detach().clone() for p in params]
        scaler.step(opt)
        scaler.update()
        if step in (2, 3):
            for p, saved, w in zip(params, before, weights):
                assert torch.equal(p, w)
                for key, value in saved.items():
                    assert torch.equal(opt.state[p][key], value), (step, key)
    assert opt.state[params[0]]["step"].item() == 3
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("master", [True, False], ids=["master", "no_master"])
def test_16_bit_params(dtype, master):
    """16-bit params: 8-bit states (the math in float32), with or without the fp32 master copy;
    small tensors keep float32 states either way (the master copy only with master_weights)."""
    params, opt = _run("adam", steps=6, dtype=dtype, state_dtype="int8", master_weights=master, backend="reference")
    big, small = opt.state[params[0]], opt.state[params[2]]
    assert big["exp_avg"].dtype == torch.uint8
    assert (MASTER_KEY in big) == master
    if master:
        assert big[MASTER_KEY].dtype == torch.float32
        assert torch.equal(params[0], big[MASTER_KEY].to(dtype))
    assert small["exp_avg"].dtype == torch.float32 and (MASTER_KEY in small) == master
    # the master copy follows the float32-param run's 8-bit trajectory closely
    if master:
        reference, _ = _run("adam", steps=6, state_dtype="int8", backend="reference")
        torch.testing.assert_close(big[MASTER_KEY], reference[0].detach(), rtol=0, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_small_tensors_of_16_bit_params_keep_float32_states(dtype, monkeypatch):
    """Issue 13, as bitsandbytes: tensors under 4,096 elements keep float32 states, also for
    16-bit params without a master copy. In the param's dtype an fp16 second moment of small
    grads underflows to 0 (g = 1e-3: (1 - beta2) g^2 = 1e-9, under fp16's least subnormal)
    and a bf16 one stalls at beta2 = 0.999; in float32 it holds the value. The param stays
    16-bit, rounded once per step from the float32 math, with the same bits on every compiled
    backend (the reference's torch ops, lerp_ with its fused multiply-add, leave a float32
    state a few ulps away, and the param then an ulp of its own)."""
    backends = ["reference", "cpu"]
    try:
        from _host_cuda import register_host_backends  # skips without fusedopt._cuda_host
        register_host_backends(monkeypatch)
        backends += ["cuda_host", "cuda_host_classic"]
    except pytest.skip.Exception:
        pass
    results = {}
    for backend in backends:
        params = _params(dtype)
        opt = fusedopt.Adam(params, lr=1e-3, state_dtype="int8", backend=backend)
        for step in range(6):
            _set_grads(params, step, scale=1e-3)
            opt.step()
        small = opt.state[params[2]]
        assert {key: value.dtype for key, value in small.items()} == {
            "step": torch.float32, "exp_avg": torch.float32, "exp_avg_sq": torch.float32}, backend
        assert params[2].dtype == dtype
        assert bool((small["exp_avg_sq"] > 0).all()), backend  # no underflow
        results[backend] = [params[2].detach().clone(), small["exp_avg"].clone(), small["exp_avg_sq"].clone()]
    for backend, tensors in results.items():
        for got, expected in zip(tensors, results["cpu"]):
            if backend == "reference":  # float32 states to float32 rounding, the param to an ulp of its own
                rtol = 1e-5 if got.dtype == torch.float32 else torch.finfo(got.dtype).eps
                torch.testing.assert_close(got, expected, rtol=rtol, atol=0)
            else:
                assert torch.equal(got, expected), backend
    # a checkpoint keeps them float32, and loads back into the same layout
    restored = fusedopt.Adam(_params(dtype), lr=1e-3, state_dtype="int8", backend="cpu")
    restored.load_state_dict(opt.state_dict())
    assert restored.state[restored.param_groups[0]["params"][2]]["exp_avg_sq"].dtype == torch.float32


def test_param_groups_choose_their_own_state_dtype():
    params = _params()
    opt = fusedopt.Adam([{"params": params[:1], "state_dtype": "int8"},
                         {"params": params[1:2], "state_dtype": torch.bfloat16},
                         {"params": params[2:]}], lr=1e-2, backend="reference")
    for step in range(2):
        _set_grads(params, step)
        opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
    assert opt.state[params[1]]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[params[2]]["exp_avg"].dtype == torch.float32


def test_non_contiguous_param_blocks_follow_memory():
    p = torch.randn(2, 16, 16, 16).to(memory_format=torch.channels_last).requires_grad_()
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9, state_dtype="int8", backend="reference")
    p.grad = torch.randn(2, 16, 16, 16).to(memory_format=torch.channels_last)
    opt.step()
    codes = opt.state[p]["momentum_buffer"]
    assert codes.stride() == p.stride()
    expected_codes, expected_absmax = Q.quantize(Q.memory_order(p.grad), True)
    assert torch.equal(Q.memory_order(codes), expected_codes)
    assert torch.equal(opt.state[p]["momentum_buffer_absmax"], expected_absmax)


CPU_INT8 = fusedopt.backends.unusable_reason("cpu", torch.device("cpu"), "int8_states")


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    CPU_INT8 is not None, reason=f"backend 'cpu' has no 8-bit kernels: {CPU_INT8}"))])
@pytest.mark.parametrize("how", ["p.data", "checkpoint"])
def test_codes_follow_their_param_into_another_layout(how, backend):
    """A param that changes memory layout under its 8-bit state (`p.data` swapped, as
    `model.to(memory_format=torch.channels_last)` does, or a checkpoint loaded into
    channels_last weights) takes its state's values along requantized in its own blocks,
    exactly as a state quantized from those values in the new layout; copying the codes
    would pair them with other blocks' scales."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(64, 16, 3, 3, generator=g).requires_grad_()
    opt = fusedopt.AdamW([p], lr=1e-3, state_dtype="int8", backend=backend)
    for _ in range(3):
        p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    keys = ("exp_avg", "exp_avg_sq")
    values = {k: Q.dequantized_like(opt.state[p][k], opt.state[p][Q.scale_key(k)], k) for k in keys}
    step = opt.state[p]["step"].clone()
    if how == "p.data":
        p.data = p.data.to(memory_format=torch.channels_last)
        moved, moved_opt = p, opt
    else:
        moved = p.detach().to(memory_format=torch.channels_last).requires_grad_()
        moved_opt = fusedopt.AdamW([moved], lr=1e-3, state_dtype="int8", backend=backend)
        moved_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    control = moved.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    control_opt = fusedopt.AdamW([control], lr=1e-3, state_dtype="int8", backend=backend)
    control_opt.state[control] = {"step": step}
    for k in keys:
        in_new_layout = torch.empty_like(control, dtype=torch.float32).copy_(values[k])
        control_opt.state[control][k], control_opt.state[control][Q.scale_key(k)] = Q.quantized_like(in_new_layout, k)
    grad = torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last)
    moved.grad, control.grad = grad.clone(memory_format=torch.preserve_format), grad
    moved_opt.step()
    control_opt.step()
    assert moved.stride() == control.stride() != torch.empty(moved.shape).stride()
    assert torch.equal(moved, control)
    for k in keys:
        assert moved_opt.state[moved][k].stride() == moved.stride()
        assert torch.equal(moved_opt.state[moved][k], control_opt.state[control][k]), k
        assert torch.equal(moved_opt.state[moved][Q.scale_key(k)], control_opt.state[control][Q.scale_key(k)]), k


def test_bad_scales_are_refused_before_the_step():
    params, opt = _run("adam", steps=1, state_dtype="int8", backend="reference")
    opt.state[params[0]]["exp_avg_absmax"] = torch.zeros(3)
    _set_grads(params, 1)
    weights = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="exp_avg_absmax.*expected a contiguous \\(24,\\)"):
        opt.step()
    assert all(torch.equal(p, w) for p, w in zip(params, weights))


# ----------------------------------------------------------------- checkpoints
def _continue(opt, params, steps, first=50):
    for step in range(first, first + steps):
        _set_grads(params, step)
        opt.step()


def test_checkpoint_round_trip_int8():
    """codes and scales saved and loaded exactly; training continues on the same bits."""
    params, opt = _run("adam", steps=5, state_dtype="int8", backend="reference")
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["state_dtype"] == "int8"
    assert saved["state"][0]["exp_avg"].dtype == torch.uint8
    assert saved["state"][0]["exp_avg_absmax"].dtype == torch.float32
    twins = [p.detach().clone().requires_grad_() for p in params]
    loaded = _make("adam", twins, state_dtype="int8", backend="reference")
    loaded.load_state_dict(saved)
    for p, t in zip(params, twins):
        for key, value in opt.state[p].items():
            assert loaded.state[t][key].dtype == value.dtype and torch.equal(loaded.state[t][key], value), key
    _continue(opt, params, 3)
    _continue(loaded, twins, 3)
    for p, t in zip(params, twins):
        assert torch.equal(p, t)
        for key, value in opt.state[p].items():
            assert torch.equal(loaded.state[t][key], value), key


def _assert_same_state_dict(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, entry in a["state"].items():
        assert entry.keys() == b["state"][index].keys(), index
        for key, value in entry.items():
            other = b["state"][index][key]
            assert value.dtype == other.dtype and torch.equal(value, other), (index, key)


@pytest.mark.parametrize("target", ["int8", None], ids=["into_int8", "into_fp32"])
@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s.pop("exp_avg_absmax"), "codes in 'exp_avg' without their block scales"),
    (lambda s: s.update(exp_avg=s["exp_avg"].to(torch.int8)), "'exp_avg' is a torch.int8 tensor, not torch.uint8"),
    (lambda s: s.update(exp_avg=s["exp_avg"].float()), "'exp_avg' is a torch.float32 tensor, not torch.uint8"),
    (lambda s: s.update(exp_avg_absmax=s["exp_avg_absmax"][:5]), "need a 1-D torch.float32 tensor of 24"),
    (lambda s: s.update(exp_avg_absmax=3.0), "that are a float"),
], ids=["no_scales", "int8_codes", "float_codes", "short_scales", "scales_not_a_tensor"])
def test_malformed_8_bit_checkpoint_is_refused_and_changes_nothing(corrupt, message, target):
    """Loaded as plain values, codes without (or with unusable) scales became the state: the
    code numbers 0-255 as a first moment. Refused before torch's load replaces anything."""
    params, source = _run("adam", steps=3, state_dtype="int8", backend="reference")
    bad = copy.deepcopy(source.state_dict())
    corrupt(bad["state"][0])
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = _make("adam", twins, state_dtype=target, backend="reference")
    _continue(opt, twins, 2)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=f"state of param 0 .*{message}"):
        opt.load_state_dict(bad)
    _assert_same_state_dict(opt.state_dict(), before)


def test_a_load_that_fails_after_torchs_puts_the_old_state_back():
    """torch's load swaps in new state and groups before its post-hooks run; a failure there
    (or in fusedopt's conversion) leaves the optimizer as it was, not half loaded."""
    params, source = _run("adam", steps=3, state_dtype="int8", backend="reference")
    checkpoint = copy.deepcopy(source.state_dict())
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = _make("adam", twins, backend="reference")
    _continue(opt, twins, 2)
    before = copy.deepcopy(opt.state_dict())
    seen = []

    def failing_hook(optimizer):
        seen.append(optimizer.state[twins[0]]["exp_avg"].dtype)  # fusedopt's conversion ran first
        raise KeyError("a user's post-hook fails")

    handle = opt.register_load_state_dict_post_hook(failing_hook)
    with pytest.raises(KeyError, match="post-hook"):
        opt.load_state_dict(checkpoint)
    handle.remove()
    assert seen == [torch.float32]
    _assert_same_state_dict(opt.state_dict(), before)
    _continue(opt, twins, 1)
    opt.load_state_dict(checkpoint)  # and a load that succeeds still converts
    assert opt.state[twins[0]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("source", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_checkpoint_into_int8_quantizes_once(source):
    """A float32 or bf16 checkpoint loaded into an optimizer with state_dtype="int8" (the
    optimizer keeps its own state_dtype, as it keeps its backend): each large state quantized
    once from the saved values; small ones as saved."""
    params, opt = _run("adam", steps=5, state_dtype=source, backend="reference")
    saved = opt.state_dict()
    twins = [p.detach().clone().requires_grad_() for p in params]
    target = _make("adam", twins, state_dtype="int8", backend="reference")
    target.load_state_dict(saved)
    assert target.param_groups[0]["state_dtype"] == "int8"
    for i, t in enumerate(twins):
        state = target.state[t]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            value = saved["state"][i][key]
            if t.numel() >= Q.MIN_QUANTIZED_NUMEL:
                codes, absmax = Q.quantized_like(value.float(), key)
                assert torch.equal(state[key], codes) and torch.equal(state[Q.scale_key(key)], absmax)
            else:
                assert state[key].dtype == torch.float32 and torch.equal(state[key], value.float())
    _continue(target, twins, 2)  # the converted state runs
    assert target.state[twins[0]]["exp_avg"].dtype == torch.uint8


@pytest.mark.parametrize("target_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_int8_checkpoint_into_other_state_dtypes_dequantizes(target_dtype):
    params, opt = _run("adam", steps=5, state_dtype="int8", backend="reference")
    saved = opt.state_dict()
    twins = [p.detach().clone().requires_grad_() for p in params]
    target = _make("adam", twins, state_dtype=target_dtype, backend="reference")
    target.load_state_dict(saved)
    for i, t in enumerate(twins):
        state = target.state[t]
        assert not any(key.endswith(Q.SCALE_SUFFIX) for key in state)
        for key in ("exp_avg", "exp_avg_sq"):
            value = saved["state"][i][key]
            if value.dtype == torch.uint8:
                value = Q.dequantized_like(value, saved["state"][i][Q.scale_key(key)], key)
            assert state[key].dtype == (target_dtype or torch.float32)
            assert torch.equal(state[key], value.to(state[key].dtype))
    _continue(target, twins, 2)


def test_to_torch_state_dict_continues_in_torch_optim():
    params, opt = _run("adam", steps=5, state_dtype="int8", backend="reference")
    saved = opt.state_dict()
    converted = fusedopt.to_torch_state_dict(saved)
    assert saved["state"][0]["exp_avg"].dtype == torch.uint8  # the input is left alone
    assert set(converted["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert converted["state"][0]["exp_avg"].dtype == torch.float32
    assert torch.equal(converted["state"][0]["exp_avg"],
                       Q.dequantized_like(saved["state"][0]["exp_avg"], saved["state"][0]["exp_avg_absmax"], "exp_avg"))
    assert "state_dtype" not in converted["param_groups"][0]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fp32_params = [p.detach().clone().requires_grad_() for p in params]
    torch_opt = torch.optim.Adam(twins, lr=1e-3, amsgrad=True)
    torch_opt.load_state_dict(converted)
    fp32 = fusedopt.Adam(fp32_params, lr=1e-3, amsgrad=True, backend="reference")
    fp32.load_state_dict(copy.deepcopy(converted))
    _continue(torch_opt, twins, 3)
    _continue(fp32, fp32_params, 3)
    for a, b in zip(twins, fp32_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize("make, reason", [
    (lambda ps: fusedopt.ASGD(ps, state_dtype="int8"), "averaged model"),
    (lambda ps: fusedopt.Rprop(ps, state_dtype="int8"), "Rprop"),
    (lambda ps: fusedopt.Adafactor(ps, state_dtype="int8"), "factored"),
    (lambda ps: fusedopt.RMSprop(ps, centered=True, state_dtype="int8"), "centered RMSprop"),
])
def test_kinds_whose_states_do_not_fit_8_bits_refuse(make, reason):
    with pytest.raises(ValueError, match=rf"state_dtype='int8' is not supported: .*{reason}"):
        make(_params())


@pytest.mark.parametrize("cls, options", [
    (fusedopt.ASGD, {}), (fusedopt.Rprop, {}), (fusedopt.Adafactor, {}), (fusedopt.RMSprop, {"centered": True}),
])
def test_the_refusal_suggests_only_state_dtypes_it_takes(cls, options):
    """The message's alternatives must themselves construct (Adafactor's once named bf16 states,
    which it refuses too)."""
    with pytest.raises(ValueError) as refused:
        cls(_params(), state_dtype="int8", **options)
    suggestion = str(refused.value).split("use state_dtype=")[1]
    named = {"None": None, "torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16}
    offered = [dtype for text, dtype in named.items() if text in suggestion]
    assert offered and None in offered
    for dtype in offered:
        cls(_params(), state_dtype=dtype, **options)


def test_refused_options():
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fusedopt.Adam(_params(), state_dtype="int4")
    with pytest.raises(ValueError, match="float64"):
        fusedopt.Adam([torch.zeros(5000, dtype=torch.float64, requires_grad=True)], state_dtype="int8")
    with pytest.raises(ValueError, match="complex"):
        fusedopt.Adam([torch.zeros(5000, dtype=torch.complex64, requires_grad=True)], state_dtype="int8")
    with pytest.raises(ValueError, match="lazy mode"):
        fusedopt.Adam(_params(), state_dtype="int8", lazy_mode=True)
    opt = fusedopt.SGD(_params(), momentum=0.9, backend="reference")
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "state_dtype": "int9"})
    assert len(opt.param_groups) == 1


def test_torch_compile_leaves_8_bit_steps_to_the_eager_path():
    """The torch.library op carries no block scales yet: under torch.compile an 8-bit group's
    step runs eagerly, outside the graph (tests/test_compile.py compares its numbers)."""
    from fusedopt.optim._ops import compiled_step_serves

    params = _params()
    opt = fusedopt.Adam(params, state_dtype="int8", backend="reference")
    _set_grads(params, 0)
    assert not compiled_step_serves(opt)
    opt.param_groups[0]["state_dtype"] = None
    assert compiled_step_serves(opt)
