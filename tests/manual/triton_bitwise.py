"""Bit-for-bit check of the Triton backend against the kernels it replaced and the C++ ones
(a manual check, not a test: it needs a second tree, and pytest does not collect it).

Runs 52 cases (four dtypes; amsgrad, optimized_update, decoupled, maximize, nesterov,
centered, momentum, weight decay, master weights, GradScaler's scale/found_inf with a
clip coefficient, a learning-rate tensor; step counters that differ between tensors;
a 64x2 block geometry so tensors span several programs, full and masked blocks) for 4
steps over hand-built TensorBatches, and saves every param, state, counter and grad.

Modes: `old` imports the tree at ROOT with per-optimizer methods (adam/sgd/rmsprop with
AdamConfig, ...: e.g. `git archive 8d8c807~1 | tar -x -C /tmp/old`); `cpu` runs that
tree's C++ CPU backend (build it first: FUSEDOPT_NO_CUDA=1 python setup.py build_ext
--inplace); `new` calls update(kind, batch, UpdateConfig) of the tree at ROOT;
`new-exp2` does the same with Adam's beta**step computed as the old kernels did.

    TRITON_INTERPRET=1 python tests/manual/triton_bitwise.py old /tmp/old /tmp/old.pt
    python tests/manual/triton_bitwise.py cpu /tmp/old /tmp/cpu.pt
    TRITON_INTERPRET=1 python tests/manual/triton_bitwise.py new $PWD /tmp/new.pt
    python tests/manual/triton_compare.py /tmp/cpu.pt /tmp/new.pt
"""
import array
import math
import sys
import types

MODE, ROOT, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, ROOT)
import torch  # noqa: E402

# Stub packages: import the backend without fusedopt/__init__ (broken mid-rewrite on the branch).
for name, path in (("fusedopt", "fusedopt"), ("fusedopt.backends", "fusedopt/backends")):
    module = types.ModuleType(name)
    module.__path__ = [f"{ROOT}/{path}"]
    sys.modules[name] = module

if MODE in ("old", "cpu"):
    from fusedopt.backends import base
    if MODE == "old":
        from fusedopt.backends.triton import TritonBackend, LaunchConfig
        import fusedopt.backends.triton as tb
        tb.LAUNCH_CONFIG = LaunchConfig(block=64, blocks_per_program=2)
        backend = TritonBackend()
    else:
        from fusedopt.backends.native import CPUBackend
        backend = CPUBackend()
    GradTransform = base.GradTransform
    TensorBatch = base.TensorBatch
else:
    from fusedopt import _layout
    import fusedopt.backends.triton as tb
    if MODE == "new-exp2":  # the old kernels' beta ** step, to check the skeleton alone
        import triton
        import triton.language as tl

        @triton.jit
        def _exp2_power(base, step):
            return tl.exp2(step * tl.log2(base))

        tb.kind_module("adam").step_power = _exp2_power
    tb.LAUNCH_CONFIG = tb.LaunchConfig(block=64, blocks_per_program=2)
    backend = tb.TritonBackend()
    GradTransform = _layout.GradTransform
    TensorBatch = _layout.TensorBatch

SIZES = (1, 3, 0, 17, 300, 129)
STEPS = 4
_versions = iter(range(10**6, 10**7))


def state_names(kind, hyper):
    if kind == "adam":
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if hyper["amsgrad"] else [])
    if kind == "sgd":
        return ["momentum_buffer"] if hyper["momentum"] != 0 else []
    return (["square_avg"] + (["grad_avg"] if hyper["centered"] else [])
            + (["momentum_buffer"] if hyper["momentum"] > 0 else []))


def make(dtype, n_states, master, step_counter, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) for n in SIZES]
    storage = torch.randn(34, generator=g, dtype=torch.float64).to(dtype)
    params.append(storage[1:])  # misaligned
    state_dtype = torch.float32 if master else dtype
    states = [[torch.zeros(p.shape, dtype=state_dtype) for p in params] for _ in range(n_states)]
    if master:
        states.append([p.float() for p in params])
    # Step counters differ between tensors: per-tensor bias corrections.
    steps = [torch.tensor(float(3 * i % 5), dtype=torch.float32) for i in range(len(params))] if step_counter else None
    return params, states, steps


def batch_of(params, grads, steps, states, dtype):
    n = len(params)
    rows = [[p.numel() for p in params], [p.data_ptr() for p in params], [g.data_ptr() for g in grads],
            [s.data_ptr() for s in steps] if steps else [0] * n] + [[t.data_ptr() for t in ts] for ts in states]
    table = array.array("q", [v for row in rows for v in row])
    return TensorBatch(params, grads, steps, states, torch.device("cpu"), dtype, table, next(_versions))


def old_config(kind, hyper, lr, lr_tensor, first_step, master, transform):
    common = dict(master_weights=master, lr_tensor=lr_tensor, grad_transform=transform)
    if kind == "adam":
        return base.AdamConfig(lr=lr, **hyper, **common)
    if kind == "sgd":
        return base.SGDConfig(lr=lr, first_step=first_step, **hyper, **common)
    return base.RMSpropConfig(lr=lr, **hyper, **common)


def run(case, seed):
    kind, dtype, hyper, master, amp, lr_as_tensor = case
    names = state_names(kind, hyper)
    params, states, steps = make(dtype, len(names), master, kind != "sgd", seed)
    lr = {"adam": 0.05, "sgd": 0.1, "rmsprop": 0.01}[kind]
    lr_tensor = torch.tensor(lr, dtype=torch.float64) if lr_as_tensor else None
    for step in range(STEPS):
        g = torch.Generator().manual_seed(seed * 100 + step)
        scale = 3.0 if amp else None
        grads = [(torch.randn(p.shape, generator=g, dtype=torch.float64) * (scale or 1.0)).to(dtype) for p in params]
        transform = GradTransform()
        if amp:
            # clip_coef in the math type (float64 for float64 params), as fusedopt/_layout.py's
            # GradTransform.check has asked since the float64 coefficient
            transform = GradTransform(grad_scale=torch.tensor(3.0), found_inf=torch.tensor([0.0, 1.0, 0.0, 2.0][step]),
                                      clip_coef=torch.tensor(0.5, dtype=F64 if dtype == F64 else F32))
        batch = batch_of(params, grads, steps, states, dtype)
        first_step = kind == "sgd" and step == 0
        lr_arg = math.nan if lr_as_tensor else lr
        if MODE in ("old", "cpu"):
            getattr(backend, kind)(batch, old_config(kind, hyper, lr_arg, lr_tensor, first_step, master, transform))
        else:
            backend.update(kind, batch, _layout.UpdateConfig(hyper=hyper, lr=lr_arg, lr_tensor=lr_tensor,
                                                            first_step=first_step, master_weights=master,
                                                            grad_transform=transform))
    return dict(params=params, states=states, steps=steps, grads=grads)


F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16


def adam(**kw):
    h = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
             decoupled_weight_decay=False, optimized_update=False)
    h.update(kw)
    return h


def sgd(**kw):
    h = dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    h.update(kw)
    return h


def rmsprop(**kw):
    h = dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False)
    h.update(kw)
    return h


CASES = []
for dtype in (F32, F64, F16, BF16):
    CASES += [
        ("adam", dtype, adam(), False, False, False),
        ("adam", dtype, adam(amsgrad=True, weight_decay=0.1, maximize=True, beta1=0.8, eps=1e-3), False, False, False),
        ("adam", dtype, adam(decoupled_weight_decay=True, weight_decay=0.1, optimized_update=True), False, True, False),
        ("adam", dtype, adam(decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True), False, False, True),
        ("sgd", dtype, sgd(), False, False, False),
        ("sgd", dtype, sgd(momentum=0.9, dampening=0.3, weight_decay=0.1, maximize=True), False, True, False),
        ("sgd", dtype, sgd(momentum=0.9, nesterov=True), False, False, True),
        ("rmsprop", dtype, rmsprop(), False, False, False),
        ("rmsprop", dtype, rmsprop(centered=True, momentum=0.9, weight_decay=0.1, alpha=0.9), False, True, False),
        ("rmsprop", dtype, rmsprop(momentum=0.5, maximize=True), False, False, True),
    ]
for dtype in (F16, BF16):  # master weights
    CASES += [
        ("adam", dtype, adam(decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True), True, True, True),
        ("adam", dtype, adam(weight_decay=0.1, optimized_update=True), True, False, False),
        ("sgd", dtype, sgd(momentum=0.9, weight_decay=0.1), True, True, True),
        ("sgd", dtype, sgd(), True, False, False),
        ("rmsprop", dtype, rmsprop(centered=True, momentum=0.5), True, True, True),
        ("rmsprop", dtype, rmsprop(weight_decay=0.1, maximize=True), True, False, False),
    ]

results = {}
for i, case in enumerate(CASES):
    results[i] = run(case, seed=i)
torch.save({"cases": [(c[0], str(c[1]), c[2], c[3], c[4], c[5]) for c in CASES], "results": results}, OUT)
print(f"{MODE}: {len(CASES)} cases saved to {OUT}")
