"""The CUDA kernels, run on the CPU.

fusedopt._cuda_host is csrc/cuda compiled as host C++ (csrc/cuda_host: a shim of the CUDA
built-ins; blocks run in turn, the threads of a block as fibers that meet at
__syncthreads), with the real kernel bodies, multi-tensor launcher and launch planner,
driven here by the address tables fusedopt/_buckets.py builds for the optimizers. For every
optimizer x option x dtype, master weights, GradScaler (scale and skip), clipping,
misaligned views, empty tensors, sizes around chunk and vector boundaries and more
tensors than one launch holds, these tests show that

(a) params, grads and every state tensor (step counters and master copies included) have
    exactly the CPU backend's bits;
(b) every element is updated exactly once: under hyper-parameters that make one update
    add exactly 1 to a param, every element of every tensor has grown by the step count;
(c) nothing outside the tensors is written: every tensor sits between guard bytes.

What the host build cannot show: timing and races between threads (they run one at a
time), the GPU's own math library (pow and sqrt in device code are the host's here), and
nvcc's contraction of a*b+c into FMAs: this build uses -ffp-contract=off like the CPU
kernels, so (a) says the CUDA sources compute the CPU's bits when compiled that way.
"""
from __future__ import annotations

import array

import pytest
import torch

import fusedopt
from _compare import ALL_CASES, REPRESENTATIVE_CASES, gradients, initial_values
from _host_cuda import (
    ALIGNMENTS, CLASSIC_BLOCKS_DEVICE, HOST_KINDS, LARGE_BLOCKS_DEVICE, Guarded, assert_same_bits, guard_new_state,
    host, register_host_backends, shifts,
)
from fusedopt import backends
from fusedopt._layout import SPARSE_INDEX_ROW
from fusedopt.backends.base import GradTransform, TensorBatch, UpdateConfig
from fusedopt.backends.native import common_arguments
from fusedopt.optim._plan import group_hyper, run_update, uses_master


DTYPE_CONFIGS = [
    (torch.float32, False), (torch.float64, False), (torch.float16, False), (torch.float16, True),
    (torch.bfloat16, False), (torch.bfloat16, True),
]
DTYPE_IDS = ["f32", "f64", "f16", "f16-master", "bf16", "bf16-master"]
LIMITS = {LARGE_BLOCKS_DEVICE: 32764, CLASSIC_BLOCKS_DEVICE: 4096}


@pytest.fixture(autouse=True)
def host_backends(monkeypatch):
    register_host_backends(monkeypatch)
    host.host_clear_launch_log()
    yield
    host.host_set_reverse_order(False)
    host.host_set_block_window()


def update_launches():
    """The launch log's multi-tensor update launches (not the step-counter increments)."""
    return [entry for entry in host.host_launch_log() if "MultiTensorArgs" in entry["parameters"]]


def check_launches_succeeded():
    log = host.host_launch_log()
    assert update_launches(), "the host backend launched no update kernel"
    for entry in log:
        assert entry["error"] == "cudaSuccess", entry
        assert entry["parameter_bytes"] <= LIMITS[entry["device"]], entry


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- (a) same bits
GRID_SHAPES = [(0,), (1,), (5,), (7, 13), (33,), (1030,), (8193,)]  # chunk: 8,192 float32 elements
GRID_STEPS = 3


class Twins:
    """The same optimizer run by the CPU backend on plain tensors and by a host CUDA
    backend on tensors between guard bytes (param, grad and state of tensor i aligned as
    ALIGNMENTS[i % 5] says)."""

    def __init__(self, make_optimizer, shapes, dtype, backend="cuda_host", seed=0):
        self.dtype = dtype
        self.values = [v.to(dtype) for v in initial_values(seed, shapes)]
        self.alignments = [ALIGNMENTS[i % len(ALIGNMENTS)] for i in range(len(shapes))]
        self.guarded = Guarded()
        self.cpu_params = [torch.nn.Parameter(v.clone()) for v in self.values]
        self.host_params = [torch.nn.Parameter(self.guarded.place(v, shifts(a)["param"]))
                            for v, a in zip(self.values, self.alignments)]
        self.cpu = make_optimizer(self.cpu_params, "cpu")
        self.host = make_optimizer(self.host_params, backend)
        guard_new_state(self.host, self.guarded, {id(p): a for p, a in zip(self.host_params, self.alignments)})

    def step(self, grads, before_step=None):
        """grads[i] None: param i has no grad this step (its step counter then lags)."""
        for p, g in zip(self.cpu_params, grads):
            p.grad = None if g is None else g.to(self.dtype)
        for p, g, a in zip(self.host_params, grads, self.alignments):
            p.grad = None if g is None else self.guarded.place(g.to(self.dtype), shifts(a)["grad"])
        for optimizer in (self.cpu, self.host):
            if before_step is not None:
                before_step(optimizer)
            optimizer.step()

    def check(self):
        for i, (pc, ph) in enumerate(zip(self.cpu_params, self.host_params)):
            assert_same_bits(ph, pc, f"param {i}")
            if pc.grad is not None or ph.grad is not None:
                assert_same_bits(ph.grad, pc.grad, f"grad {i}")
            sc, sh = self.cpu.state.get(pc, {}), self.host.state.get(ph, {})
            assert set(sh) == set(sc), f"param {i}: state keys {sorted(sh)} vs {sorted(sc)}"
            for key in sc:
                assert_same_bits(sh[key], sc[key], f"param {i} state {key!r}")
        self.guarded.check()
        check_launches_succeeded()


@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_same_bits_as_the_cpu_backend(case, dtype, master):
    # Every other case runs blocks and threads in reverse: a thread that read what thread 0
    # publishes before the barrier would see the previous block's coefficients.
    host.host_set_reverse_order(ALL_CASES.index(case) % 2 == 1)
    twins = Twins(lambda ps, backend: case.fused(ps, backend, master_weights=master), GRID_SHAPES, dtype)
    for step, grads in enumerate(gradients(GRID_STEPS, shapes=GRID_SHAPES)):
        # Every third param sits out the second step: in the last step the tensors of one
        # launch have different step counters, so Adam's blocks have different coefficients.
        twins.step([None if step == 1 and i % 3 == 1 else g for i, g in enumerate(grads)])
    twins.check()


# GradScaler's scale and found_inf, and the clip coefficient of max_grad_norm, step by step:
# (scale, found_inf, max_grad_norm); a scale also multiplies that step's grads.
TRANSFORM_STEPS = [(1024.0, 0.0, None), (None, None, 0.5), (1024.0, 1.0, 0.5), (2048.0, 0.0, 0.5), (None, None, None)]


@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_grad_scaler_and_clipping_same_bits(case, dtype, master):
    twins = Twins(lambda ps, backend: case.fused(ps, backend, master_weights=master), GRID_SHAPES, dtype)
    for (scale, found_inf, max_norm), grads in zip(TRANSFORM_STEPS, gradients(len(TRANSFORM_STEPS),
                                                                                 shapes=GRID_SHAPES)):
        def before_step(optimizer):
            for group in optimizer.param_groups:
                group["max_grad_norm"] = max_norm
            optimizer.grad_scale = None if scale is None else torch.tensor(scale)
            optimizer.found_inf = None if found_inf is None else torch.tensor(found_inf)

        twins.step([g * (scale or 1.0) for g in grads], before_step)
    twins.check()


@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_found_inf_skips_the_step_inside_the_kernel(case, dtype, master):
    """The optimizers skip a CPU-side found_inf before any kernel runs (SGD) or hand it to
    the kernel; on a GPU it is a device tensor the kernel must read. Handed straight to the
    kernels, it must leave every byte as it was."""
    twins = Twins(lambda ps, backend: case.fused(ps, backend, master_weights=master), GRID_SHAPES, dtype)
    twins.step(gradients(1, shapes=GRID_SHAPES)[0])
    optimizer = twins.host
    snapshot = [t.clone() for t in _all_tensors(optimizer)]
    grad_transform = GradTransform(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0),
                                   clip_coef=torch.tensor(0.5))
    for index, group in enumerate(optimizer.param_groups):
        hyper = group_hyper(optimizer, group)
        for bucket, batch, fresh in optimizer._prepare_group(index, group, hyper):
            run_update(optimizer.spec, backends.get("cuda_host"), batch, fresh, hyper,
                       group["lr"], uses_master(group, bucket.dtype), grad_transform.for_dtype(bucket.dtype))
    for i, (before, after) in enumerate(zip(snapshot, _all_tensors(optimizer))):
        assert_same_bits(after, before, f"tensor {i} after a skipped step")
    twins.guarded.check()
    check_launches_succeeded()


def _all_tensors(optimizer):
    for group in optimizer.param_groups:
        for p in group["params"]:
            yield p
            yield p.grad
            yield from optimizer.state[p].values()


# --------------------------------------------------------------------------- LAMB's two passes
# LAMB (issue 12) runs a norm pass (csrc/cuda/norms.cuh: ||p||^2 and ||u||^2 per tensor in
# fusedopt/reduce.h's blocks of 65,536 elements, lanes and tree) and then the update with each
# tensor's trust ratio (UpdateOptions::tensor_scale). Shapes: empty and one-element tensors,
# exactly one block, one element more, two blocks and a bit, and small odd ones.
LAMB_SHAPES = [(0,), (1,), (131075,), (5,), (65536,), (1,), (65537,), (0,), (300, 7), (4097,), (2, 3, 5)]
LAMB_STEPS = 21
LAMB_OPTIONS = {
    "defaults-max_grad_norm": dict(max_grad_norm=1.0),
    "no_bias_correction-no_grad_averaging-per_tensor_clip": dict(
        bias_correction=False, grad_averaging=False, weight_decay=0.1, clip_grad_norm_per_tensor=0.5),
    "optimized_update-no_decay-maximize-both_clips": dict(
        optimized_update=True, weight_decay=0.0, maximize=True, max_grad_norm=2.0, clip_grad_norm_per_tensor=0.3),
}


def launched(op: str) -> int:
    """Launches of the multi-tensor kernel with this op (UpdateChunkOp, NormChunkOp) so far
    (not of the prologue kernel, whose parameters name the op too)."""
    return sum(f"{op}<" in entry["parameters"] for entry in update_launches())


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_host_classic"], ids=["device0", "device1"])
@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
@pytest.mark.parametrize("options", LAMB_OPTIONS.values(), ids=LAMB_OPTIONS)
def test_lamb_same_bits_as_the_cpu_backend_over_many_steps(options, dtype, master, backend):
    """21 steps of both passes on tensors of up to two blocks and a bit; every seventh step
    some params have no grad, so the tensors' step counters (and coefficients) differ."""
    host.host_set_reverse_order(backend == "cuda_host_classic")
    twins = Twins(lambda ps, b: fusedopt.LAMB(ps, lr=1e-2, backend=b, master_weights=master, **options),
                  LAMB_SHAPES, dtype, backend=backend)
    for step, grads in enumerate(gradients(LAMB_STEPS, shapes=LAMB_SHAPES)):
        twins.step([None if step % 7 == 3 and i % 3 == 2 else g for i, g in enumerate(grads)])
    twins.check()
    assert launched("NormChunkOp") >= LAMB_STEPS and launched("UpdateChunkOp") >= LAMB_STEPS


# The grad transforms the norm pass applies as the update will, per call.
NORM_TRANSFORMS = {
    "none": lambda n: GradTransform(),
    "scale-clip_coef-clip_value": lambda n: GradTransform(grad_scale=torch.tensor(512.0),
                                                          clip_coef=torch.tensor(0.25), clip_value=0.7),
    # found_inf skips the update, not the norm pass: the CPU's norms are computed all the same
    "per_tensor_clip-found_inf": lambda n: GradTransform(found_inf=torch.tensor(1.0), clip_coef=torch.tensor(0.5),
                                                         tensor_clip=torch.linspace(0.1, 1.5, n)),
}


def check_lamb_norms(shapes, dtype, master, backend) -> int:
    """The norm pass alone, after two steps (the first without some grads, so the step
    counters differ), against the CPU's norms on the very same batch, under each of
    NORM_TRANSFORMS: the same bits, nothing written (no counter advanced), as many norm
    launches as the planner gives for records of param, grad, coefficient record, partials,
    two moments, master copy and clip coefficient where present, each a success. Returns the
    most launches one call took."""
    most = 0
    twins = Twins(lambda ps, b: fusedopt.LAMB(ps, lr=1e-2, backend=b, master_weights=master), shapes, dtype,
                  backend=backend)
    for step, grads in enumerate(gradients(2, shapes=shapes)):
        twins.step([None if step == 0 and i % 3 == 1 else g for i, g in enumerate(grads)])
    optimizer = twins.host
    snapshot = [t.clone() for t in _all_tensors(optimizer)]
    for name, transform in NORM_TRANSFORMS.items():
        for index, group in enumerate(optimizer.param_groups):
            hyper = group_hyper(optimizer, group)
            for bucket, batch, fresh in optimizer._prepare_group(index, group, hyper):
                config = UpdateConfig(hyper, 1e-2, None, False, uses_master(group, bucket.dtype),
                                      transform(len(batch)).for_dtype(bucket.dtype))
                host.host_clear_launch_log()
                actual = backends.get(backend).norms("lamb", batch, config)
                assert_same_bits(actual, backends.get("cpu").norms("lamb", batch, config), f"norms, {name}")
                addresses = 6 + int(config.master_weights) + int(config.grad_transform.tensor_clip is not None)
                plan = host.cuda_launch_plan([p.numel() for p in batch.params], addresses, element_size(dtype),
                                             large_parameter_block=backend == "cuda_host",
                                             chunk_bytes=65536 * element_size(dtype))
                assert launched("NormChunkOp") == plan["launches"] and not launched("UpdateChunkOp")
                most = max(most, plan["launches"])
                for entry in host.host_launch_log():
                    assert entry["error"] == "cudaSuccess", entry
                    assert entry["parameter_bytes"] <= LIMITS[entry["device"]], entry
    for i, (before, after) in enumerate(zip(snapshot, _all_tensors(optimizer))):
        assert_same_bits(after, before, f"tensor {i} after the norm passes")
    twins.guarded.check()
    return most


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_host_classic"], ids=["device0", "device1"])
@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
def test_lamb_norms_same_bits_as_the_cpu_norms(dtype, master, backend):
    check_lamb_norms(LAMB_SHAPES, dtype, master, backend)


@pytest.mark.parametrize("dtype, master, backend", [
    (torch.float32, False, "cuda_host"), (torch.bfloat16, True, "cuda_host_classic"),
    (torch.float64, False, "cuda_host_classic"),
], ids=["f32-device0", "bf16-master-device1", "f64-device1"])
def test_lamb_norms_over_several_launches(dtype, master, backend):
    """611 tensors (489 not empty): more than one launch of the norm kernel (at most 427
    records fit 32 KB, 63 fit 4 KB), of the final sums (503 tensors a launch) and, on
    device 1, of the coefficient records (477 counters fit 4 KB)."""
    assert check_lamb_norms(LAMB_SHAPES + [(k % 5,) for k in range(600)], dtype, master, backend) >= 2


def test_norms_of_an_optimizer_without_a_norm_pass_is_an_error():
    table = array.array("q", [1, 0, 0, 0])
    sgd = host.optimizers.sgd(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    with pytest.raises(ValueError, match="fusedopt cuda sgd: this optimizer has no norm pass"):
        sgd.cuda_norms(table.buffer_info()[0], 1, 0, 0.1, 0, False, False, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0)
        # table, count, dtype, lr, lr tensor, first step, master, scale, found_inf, clip coef, clip value,
        # workspace, its size, partials, their count, out, device, stream, tensor clip


def test_lamb_norms_refuse_a_partials_buffer_too_small():
    twins = Twins(lambda ps, b: fusedopt.LAMB(ps, backend=b), [(65537,), (3,)], torch.float32)
    twins.step(gradients(1, shapes=[(65537,), (3,)])[0])
    group = twins.host.param_groups[0]
    hyper = group_hyper(twins.host, group)
    ((_, batch, _),) = list(twins.host._prepare_group(0, group, hyper))
    workspace = torch.empty(3 * host.build_info()["cuda_workspace_bytes_per_tensor"], dtype=torch.uint8)
    partials, out = torch.empty(5, dtype=torch.float64), torch.empty(4, dtype=torch.float64)  # 3 blocks: 6 needed
    lamb = host.optimizers.lamb(hyper)
    host.host_clear_launch_log()
    with pytest.raises(ValueError, match="fusedopt cuda lamb norms: the partials buffer needs 6 float64 values"):
        lamb.cuda_norms(*common_arguments(batch, UpdateConfig(hyper, 1e-2)), workspace.data_ptr(), workspace.numel(),
                        partials.data_ptr(), partials.numel(), out.data_ptr(), 0, 0, 0)
    assert host.host_launch_log() == []


# --------------------------------------------------------------------------- (b) exactly once
# Hyper-parameters under which an update adds exactly `increments[k]` to every param at step
# k when every grad is -1 (beta=0, alpha=0, eps=0 make Adam's and RMSprop's step
# lr * g / |g|), and the state every element must hold after each step.
COUNTING = {
    "Adam": (fusedopt.Adam, dict(lr=1.0, betas=(0.0, 0.0), eps=0.0), (1.0, 1.0),
             {"exp_avg": -1.0, "exp_avg_sq": 1.0}),
    "Adam-amsgrad": (fusedopt.Adam, dict(lr=1.0, betas=(0.0, 0.0), eps=0.0, amsgrad=True), (1.0, 1.0),
                     {"exp_avg": -1.0, "exp_avg_sq": 1.0, "max_exp_avg_sq": 1.0}),
    "AdamW-optimized_update": (fusedopt.AdamW, dict(lr=1.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0,
                                                     optimized_update=True), (1.0, 1.0),
                               {"exp_avg": -1.0, "exp_avg_sq": 1.0}),
    "SGD": (fusedopt.SGD, dict(lr=1.0), (1.0, 1.0), {}),
    # momentum 0.5: the buffer is -1 (first-step rule), then -1.5
    "SGD-momentum": (fusedopt.SGD, dict(lr=1.0, momentum=0.5), (1.0, 1.5), {"momentum_buffer": (-1.0, -1.5)}),
    "RMSprop": (fusedopt.RMSprop, dict(lr=1.0, alpha=0.0, eps=0.0), (1.0, 1.0), {"square_avg": 1.0}),
    "RMSprop-momentum": (fusedopt.RMSprop, dict(lr=1.0, alpha=0.0, eps=0.0, momentum=0.5), (1.0, 1.5),
                         {"square_avg": 1.0, "momentum_buffer": (-1.0, -1.5)}),
    # lambd=0 keeps eta at lr=1 and t0=1e6 mu at 1 (ax = p): scalar states ride in the prologue
    "ASGD": (fusedopt.ASGD, dict(lr=1.0, lambd=0.0), (1.0, 1.0), {}),
}


def boundary_sizes(dtype: torch.dtype, master: bool):
    """Empty, one element, around the vector width, around one vector per thread of a
    block, around the chunk, and two chunks and a bit: as chunk and vector sizes follow."""
    chunk = host.cuda_launch_plan([1], 1, element_size(dtype))["chunk_elements"]
    width = 16 // max(element_size(dtype), 4 if master else element_size(dtype))  # 16-byte vectors
    return sorted({0, 1, width - 1, width, width + 1, 256 * width - 1, 256 * width + 1, chunk - 1, chunk,
                   chunk + 1, 2 * chunk + width + 1})


class Counting:
    """One counting run: params p0 (small integers) between guard bytes, grads -1."""

    def __init__(self, variant, sizes, dtype, master, backend, steps):
        make, options, increments, self.expected_state = COUNTING[variant]
        self.increments = increments[:steps]
        self.dtype, self.steps = dtype, steps
        self.guarded = Guarded()
        self.alignments = [ALIGNMENTS[k % len(ALIGNMENTS)] for k in range(len(sizes))]
        self.initial = [(torch.arange(n, dtype=torch.float64) % 29 - 14).to(dtype) for n in sizes]
        self.params = [torch.nn.Parameter(self.guarded.place(v, shifts(a)["param"]))
                       for v, a in zip(self.initial, self.alignments)]
        self.optimizer = make(self.params, backend=backend, master_weights=master, **options)
        guard_new_state(self.optimizer, self.guarded, {id(p): a for p, a in zip(self.params, self.alignments)})

    def run(self):
        for _ in range(self.steps):
            for p, a in zip(self.params, self.alignments):
                p.grad = self.guarded.place(torch.full(p.shape, -1.0, dtype=self.dtype), shifts(a)["grad"])
            self.optimizer.step()

    def check(self):
        total = sum(self.increments)
        for i, (p, p0) in enumerate(zip(self.params, self.initial)):
            expected = (p0.double() + total).to(self.dtype)
            grown = p.detach().double() - p0.double()
            assert_same_bits(p.detach(), expected, f"tensor {i} of {p.numel()} elements: grown by "
                             f"{sorted(set(grown.tolist()))[:5]} where every element must grow by {total}")
            state = self.optimizer.state[p]
            for key, value in self.expected_state.items():
                value = value[self.steps - 1] if isinstance(value, tuple) else value
                assert_same_bits(state[key], torch.full_like(state[key], value), f"tensor {i} state {key!r}")
            if "step" in state:
                assert state["step"].item() == self.steps, f"tensor {i}: step {state['step'].item()}"
            if "master_param" in state:
                assert_same_bits(state["master_param"], p0.float() + total, f"tensor {i} master copy")
        self.guarded.check()
        check_launches_succeeded()


ORDERS = [("cuda_host", False), ("cuda_host_classic", True)]


@pytest.mark.parametrize("backend, reverse", ORDERS, ids=["device0-forward", "device1-reverse"])
@pytest.mark.parametrize("dtype, master", DTYPE_CONFIGS, ids=DTYPE_IDS)
@pytest.mark.parametrize("variant", COUNTING)
def test_every_element_is_updated_exactly_once(variant, dtype, master, backend, reverse):
    """Sizes around the chunk and vector boundaries, each twice at different alignments;
    blocks and threads run in index order on device 0, in reverse on device 1."""
    host.host_set_reverse_order(reverse)
    sizes = boundary_sizes(dtype, master) * 2
    run = Counting(variant, sizes, dtype, master, backend, steps=2)
    run.run()
    run.check()


@pytest.mark.parametrize("variant, dtype, master, device", [
    ("Adam-amsgrad", torch.bfloat16, True, LARGE_BLOCKS_DEVICE),
    ("RMSprop-momentum", torch.float64, False, LARGE_BLOCKS_DEVICE),
    ("SGD-momentum", torch.float32, False, CLASSIC_BLOCKS_DEVICE),
    ("Adam", torch.float16, False, CLASSIC_BLOCKS_DEVICE),
    ("ASGD", torch.bfloat16, True, CLASSIC_BLOCKS_DEVICE),
], ids=["adam-amsgrad-bf16-master-device0", "rmsprop-momentum-f64-device0", "sgd-momentum-f32-device1",
        "adam-f16-device1", "asgd-bf16-master-device1"])
def test_more_tensors_than_one_launch_holds(variant, dtype, master, device):
    """A table that needs several update launches (of 32 KB parameter blocks on device 0,
    4 KB on device 1), with empty tensors among tiny ones; on device 1 the step counters
    too take more than one launch (508 fit a 4 KB block)."""
    backend = "cuda_host" if device == LARGE_BLOCKS_DEVICE else "cuda_host_classic"
    # One probe step creates the state that tells how many addresses a record carries.
    probe = Counting(variant, [1], dtype, master, backend, steps=1)
    probe.run()
    capacity = host.cuda_launch_plan([1] * 5000, record_addresses(probe.optimizer), element_size(dtype),
                                     large_parameter_block=device == LARGE_BLOCKS_DEVICE)["tensors_per_launch"][0]
    sizes = []
    while sum(n > 0 for n in sizes) < capacity + 20 or len(sizes) < STEP_COUNTERS_PER_CLASSIC_LAUNCH + 20:
        sizes.append(0 if len(sizes) % 9 == 0 else len(sizes) % 5 + 1)
    host.host_clear_launch_log()
    run = Counting(variant, sizes, dtype, master, backend, steps=1)
    run.run()
    run.check()
    launches = update_launches()
    assert len(launches) >= 2
    if device == LARGE_BLOCKS_DEVICE:
        assert any(entry["parameter_bytes"] > 4096 for entry in launches)
    assert sum(entry["blocks_run"] for entry in launches) == sum(n > 0 for n in sizes)  # one chunk each
    increments = [entry for entry in host.host_launch_log() if "PrologueArgs" in entry["parameters"]]
    if "step" in run.optimizer.state[run.params[0]]:
        # Each tensor's counter and scalar states (ASGD's eta and mu) take a pointer each.
        pointers = 1 + len(run.optimizer.spec.scalar_states)
        per_launch = (LIMITS[device] - 256 - 24) // 8 // pointers  # launch_plan.h's PrologueArgs
        assert len(increments) == -(-len(sizes) // per_launch) >= (1 if device == LARGE_BLOCKS_DEVICE else 2)


STEP_COUNTERS_PER_CLASSIC_LAUNCH = (4096 - 3 * 8 - 8) // 8  # launch_plan.h's StepCounterArgs


def record_addresses(optimizer) -> int:
    """Addresses a tensor's record carries in the update launch (cuda/update.cuh): param,
    grad, the coefficient record of an optimizer whose coefficients follow the step counter
    (Adam), and every other state tensor, master copy included."""
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    native = getattr(host.optimizers, optimizer.kind)
    # The scalar states (ASGD's eta and mu) are read by the prologue only, not carried.
    return 2 + len(state) - ("step" in state) - native.scalar_states + native.step_dependent


# --------------------------------------------------------------------------- offsets past 2^31
@pytest.mark.parametrize("alignment", ["aligned", "all_shifted"])
def test_the_last_block_of_a_tensor_past_two_to_the_31_elements(alignment):
    """The last chunk of a float32 tensor of 2^31 + 100 elements starts at element 2^31: the
    kernel's element offsets must be 64-bit. Only that block (and the one after it, of the
    next tensor) runs, on addresses that put the tensor's end on real memory."""
    big = 2**31 + 100
    chunk = host.cuda_launch_plan([1], 1, 4)["chunk_elements"]
    last_begin = (big - 1) // chunk * chunk
    assert last_begin >= 2**31
    tail = big - last_begin
    guarded = Guarded()
    shift = shifts(alignment)
    params = [guarded.place(torch.arange(tail, dtype=torch.float32), shift["param"]),
              guarded.place(torch.arange(5, dtype=torch.float32), shift["param"])]
    grads = [guarded.place(torch.full((tail,), -1.0), shift["grad"]), guarded.place(torch.full((5,), -1.0))]
    if params[0].data_ptr() < 2**40:
        pytest.skip("the host's heap lies too low to address 8 GiB below it")
    numels = [big, 5]
    table = array.array("q", numels + [params[0].data_ptr() - 4 * last_begin, params[1].data_ptr()]
                        + [grads[0].data_ptr() - 4 * last_begin, grads[1].data_ptr()] + [0, 0])
    plan = host.cuda_launch_plan(numels, 2, 4, large_parameter_block=False)
    assert plan["launches"] == 1
    next_tensor_block = plan["first_chunk"][1]
    host.host_set_block_window(next_tensor_block - 1, next_tensor_block + 1)
    batch = TensorBatch(params, grads, None, [], torch.device("cpu"), torch.float32, table, 0)
    config = UpdateConfig(dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False), lr=1.0)
    backends.get("cuda_host").update("sgd", batch, config)
    assert [entry["blocks_run"] for entry in host.host_launch_log()] == [2]
    assert_same_bits(params[0], torch.arange(tail, dtype=torch.float32) + 1, "the tail past 2^31")
    assert_same_bits(params[1], torch.arange(5, dtype=torch.float32) + 1, "the next tensor")
    guarded.check()


# --------------------------------------------------------------------------- the shim itself
def test_the_shims_16_bit_conversions_round_as_torch():
    """The GPU conversions of the host build (round to nearest even; NaN becomes 0x7FFF)
    against torch's, on a million random float32 bit patterns and the edge cases."""
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-2**31, 2**31, (1 << 20,), generator=g, dtype=torch.int64).to(torch.int32)
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-14,
                          2.0**-14 * (1 - 2.0**-11), 3.0 * 2.0**-26, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
                          3.3895e38, float("inf"), -float("inf")], dtype=torch.float32)
    x = torch.cat([random_bits.view(torch.float32), edges])
    x = x[~x.isnan()]
    for convert, dtype in ((host.host_float_to_half_bits, torch.float16),
                           (host.host_float_to_bfloat16_bits, torch.bfloat16)):
        out = torch.empty(x.numel(), dtype=torch.int16)
        convert(x.data_ptr(), out.data_ptr(), x.numel())
        assert_same_bits(out, x.to(dtype).view(torch.int16), f"float32 -> {dtype}")
        nan = torch.tensor([float("nan"), -float("nan")], dtype=torch.float32)
        out = torch.empty(2, dtype=torch.int16)
        convert(nan.data_ptr(), out.data_ptr(), 2)
        assert out.tolist() == [0x7FFF, 0x7FFF]
    every_half = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)
    out = torch.empty(every_half.numel(), dtype=torch.float32)
    host.host_half_bits_to_float(every_half.data_ptr(), out.data_ptr(), every_half.numel())
    assert_same_bits(out, every_half.view(torch.float16).float(), "float16 -> float32")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_syncthreads_orders_every_threads_writes(reverse):
    """Three rounds of: write shared[t], barrier, read shared[t + 1], barrier. Any thread
    running past a barrier early reads a stale neighbour."""
    host.host_set_reverse_order(reverse)
    threads, blocks = 256, 3
    out = host.host_selftest("neighbour_exchange", blocks)
    expected = [((t + 3) % threads) + 1000 * b + 3 for b in range(blocks) for t in range(threads)]
    assert out == expected


@pytest.mark.parametrize("kernel", ["early_return", "different_barriers"])
def test_a_barrier_not_all_threads_reach_fails_the_launch(kernel):
    with pytest.raises(RuntimeError, match="__syncthreads"):
        host.host_selftest(kernel)
    assert host.host_launch_log()[-1]["error"] == "cudaErrorLaunchFailure"


@pytest.mark.parametrize("kernel, message", [
    ("misaligned_load", r"thread \(0, 0, 0\): .*misaligned address .* 16-byte alignment"),
    ("null_store", r"thread \(7, 0, 0\): store to a null pointer"),
    ("wild_store", r"thread \(3, 0, 0\): illegal address 0x40"),
    ("stack_overflow", r"thread \(0, 0, 0\): the thread overflowed its 256 KiB stack"),
])
def test_an_illegal_access_fails_the_launch(kernel, message):
    """Where a GPU stops a kernel with a misaligned or illegal address, so does the host
    build, naming the thread: the compiler's alignment and null checks on every access of
    the kernels, and memory faults during a launch."""
    with pytest.raises(RuntimeError, match=message):
        host.host_selftest(kernel)
    assert host.host_launch_log()[-1]["error"] == "cudaErrorLaunchFailure"
    assert host.host_selftest("neighbour_exchange")[:2] == [6, 7]  # the next launch runs as usual


def test_an_unknown_device_is_an_error_naming_the_op():
    table = array.array("q", [1, 0, 0, 0])
    sgd = host.optimizers.sgd(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    with pytest.raises(RuntimeError, match="fusedopt cuda sgd"):
        sgd.cuda_update(table.buffer_info()[0], 1, 0, 0.1, 0, False, False, 0, 0, 0, 0.0, 0, 0, 0, 7, 0)
        # table, count, dtype, lr, lr tensor, first step, master, scale, found_inf, clip coef, clip value,
        # workspace, its size, chunk, device, stream


@pytest.mark.parametrize("device, refused", [(LARGE_BLOCKS_DEVICE, False), (CLASSIC_BLOCKS_DEVICE, True)])
def test_parameters_over_the_devices_limit_fail_the_launch(device, refused):
    """A kernel with 5,000 bytes of parameters runs on device 0 and is refused by device 1,
    as by a GPU without large parameter blocks; every test checks its launches this way."""
    if refused:
        with pytest.raises(RuntimeError, match="accepts 4096"):
            host.host_selftest("large_parameters", device=device)
        assert host.host_launch_log()[-1]["error"] == "cudaErrorInvalidValue"
    else:
        assert host.host_selftest("large_parameters", device=device)[:3] == [5000, 5000, 5000]


# --------------------------------------------------------------------------- lazy (sparse-row) Adam
# csrc/cuda/sparse_adam.cu: a prologue launch per SPARSE_PROLOGUE_CAPACITY tensors (step counters
# and per-tensor records), then one launch updates the present rows of every tensor, a warp per row.
def sparse_prologue_capacity(device: int) -> int:
    return (LIMITS[device] - 256 - 24) // (8 * 10)  # sparse_adam.cu's SparsePrologueArgs: 10 columns a tensor


SPARSE_ROWS_PER_BLOCK = 8  # sparse_adam.cu: 256 threads, a warp per row

# (shape, sparse dims) of the tables of one bucket: embedding tables, rows with two dense
# dims, element rows (two sparse dims), a 1-D param, and a table whose grad is always empty.
SPARSE_TABLES = [((40, 6), 1), ((17, 3), 1), ((9, 4, 3), 1), ((5, 6), 2), ((11,), 1), ((8, 5), 1)]
SPARSE_OPTIMIZERS = {
    "SparseAdam": lambda ps, b: fusedopt.SparseAdam(ps, lr=0.01, backend=b),
    "SparseAdam-maximize-hyper": lambda ps, b: fusedopt.SparseAdam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-6,
                                                                   maximize=True, backend=b),
    "Adam-weight_decay": lambda ps, b: fusedopt.Adam(ps, lr=0.01, weight_decay=0.1, lazy_mode=True, backend=b),
    "Adam-amsgrad-maximize": lambda ps, b: fusedopt.Adam(ps, lr=0.01, amsgrad=True, maximize=True, lazy_mode=True,
                                                         backend=b),
    "AdamW-weight_decay-amsgrad": lambda ps, b: fusedopt.AdamW(ps, lr=0.02, weight_decay=0.3, amsgrad=True,
                                                               lazy_mode=True, backend=b),
    "AdamW-absolute": lambda ps, b: fusedopt.AdamW(ps, lr=0.02, weight_decay=0.01, weight_decay_mode="absolute",
                                                   lazy_mode=True, backend=b),
    "Adam-optimized-weight_decay": lambda ps, b: fusedopt.Adam(ps, lr=0.01, weight_decay=0.05, optimized_update=True,
                                                               lazy_mode=True, backend=b),
}


def sparse_grads(tables, step: int, dtype: torch.dtype):
    """Uncoalesced sparse COO grads with repeated indices (and, every seventh step, none at
    all): a different number of entries per table and step, some of them empty."""
    g = torch.Generator().manual_seed(500 + step)
    grads = []
    for i, (shape, sparse_dims) in enumerate(tables):
        nnz = 0 if step % 7 == 5 or i == len(tables) - 1 and shape == (8, 5) else int(
            torch.randint(0, 9, (), generator=g))
        # indices from the first few rows only, so repeats are frequent
        indices = torch.stack([torch.randint(0, min(n, 6), (nnz,), generator=g) for n in shape[:sparse_dims]])
        values = torch.randn(nnz, *shape[sparse_dims:], generator=g, dtype=torch.float64).to(dtype)
        grads.append(torch.sparse_coo_tensor(indices, values, shape))
    return grads


def present_rows(grads) -> int:
    return sum(g.coalesce()._nnz() for g in grads)


def sparse_launches(kind: str):
    """The log's sparse-row launches: "prologue" (SparsePrologueArgs) or "rows" (SparseRowsArgs)."""
    marker = {"prologue": "SparsePrologueArgs", "rows": "SparseRowsArgs"}[kind]
    return [entry for entry in host.host_launch_log() if marker in entry["parameters"]]


class SparseTwins:
    """One lazy-mode optimizer on the CPU backend, the same on a host CUDA backend whose
    params and states sit between guard bytes (tensor i at alignment ALIGNMENTS[i % 5])."""

    def __init__(self, make_optimizer, tables, dtype, backend, seed=3):
        torch.manual_seed(seed)
        self.tables, self.dtype = tables, dtype
        values = [torch.randn(shape, dtype=torch.float64).to(dtype) for shape, _ in tables]
        alignments = [ALIGNMENTS[i % len(ALIGNMENTS)] for i in range(len(tables))]
        self.guarded = Guarded()
        self.cpu_params = [torch.nn.Parameter(v.clone()) for v in values]
        self.host_params = [torch.nn.Parameter(self.guarded.place(v, shifts(a)["param"]))
                            for v, a in zip(values, alignments)]
        self.cpu = make_optimizer(self.cpu_params, "cpu")
        self.host = make_optimizer(self.host_params, backend)
        guard_new_state(self.host, self.guarded, {id(p): a for p, a in zip(self.host_params, alignments)})

    def step(self, grads):
        for p, q, grad in zip(self.cpu_params, self.host_params, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        self.cpu.step()
        self.host.step()

    def check(self, what: str):
        for i, (pc, ph) in enumerate(zip(self.cpu_params, self.host_params)):
            assert_same_bits(ph, pc, f"{what}: param {i}")
            sc, sh = self.cpu.state[pc], self.host.state[ph]
            assert set(sh) == set(sc), f"{what}: param {i}: state keys {sorted(sh)} vs {sorted(sc)}"
            for key in sc:
                assert_same_bits(sh[key], sc[key], f"{what}: param {i} state {key!r}")
        self.guarded.check()
        for entry in host.host_launch_log():
            assert entry["error"] == "cudaSuccess", entry
            assert entry["parameter_bytes"] <= LIMITS[entry["device"]], entry


@pytest.mark.parametrize("backend, reverse", ORDERS, ids=["device0-forward", "device1-reverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("optimizer", list(SPARSE_OPTIMIZERS))
def test_sparse_adam_same_bits_as_the_cpu_backend(optimizer, dtype, backend, reverse):
    """Six tables of one bucket, 22 steps of uncoalesced grads with repeated indices (empty
    ones among them, and steps where no table has a row): params, moments, max moments and
    step counters have the CPU kernel's bits after every step; each step is one prologue
    launch and, when any row is present, one update launch with a warp per row."""
    host.host_set_reverse_order(reverse)
    twins = SparseTwins(SPARSE_OPTIMIZERS[optimizer], SPARSE_TABLES, dtype, backend)
    for step in range(22):
        grads = sparse_grads(SPARSE_TABLES, step, dtype)
        host.host_clear_launch_log()
        twins.step(grads)
        twins.check(f"step {step}")
        rows = present_rows(grads)
        assert len(sparse_launches("prologue")) == 1
        assert [entry["blocks_run"] for entry in sparse_launches("rows")] == (
            [-(-rows // SPARSE_ROWS_PER_BLOCK)] if rows else [])
    assert all(int(twins.host.state[p]["step"]) == 22 for p in twins.host_params)


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_host_classic"], ids=["device0", "device1"])
def test_sparse_adam_more_tensors_than_one_prologue_launch_holds(backend):
    """More tables than one prologue launch carries (406 in 32 KB on device 0, 47 in 4 KB on
    device 1): several prologue launches, still one update launch, the CPU kernel's bits."""
    device = LARGE_BLOCKS_DEVICE if backend == "cuda_host" else CLASSIC_BLOCKS_DEVICE
    capacity = sparse_prologue_capacity(device)
    tables = [((3 + i % 4, 2), 1) for i in range(capacity + 4)]
    twins = SparseTwins(lambda ps, b: fusedopt.Adam(ps, lr=0.01, amsgrad=True, lazy_mode=True, backend=b), tables,
                        torch.float32, backend)
    for step in range(2):
        grads = sparse_grads(tables, step, torch.float32)
        host.host_clear_launch_log()
        twins.step(grads)
        twins.check(f"step {step}")
        prologues = sparse_launches("prologue")
        assert len(prologues) == 2
        if device == LARGE_BLOCKS_DEVICE:
            assert prologues[0]["parameter_bytes"] > 4096
        assert [entry["blocks_run"] for entry in sparse_launches("rows")] == [
            -(-present_rows(grads) // SPARSE_ROWS_PER_BLOCK)]


def _sparse_batch(optimizer, params):
    """The checked sparse-row batch fusedopt builds for these params (state created already)."""
    from fusedopt._sparse_rows import sparse_row_batch

    group = optimizer.param_groups[0]
    return sparse_row_batch(params, [optimizer.state[p] for p in params], bool(group.get("amsgrad")), "test")


def _sparse_hyper(optimizer):
    from fusedopt.optim._plan import group_hyper

    return group_hyper(optimizer, optimizer.param_groups[0])


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_host_classic"], ids=["device0", "device1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_sparse_adam_reads_a_float64_lr_tensor(backend, dtype):
    """lr as a one-element float64 tensor (read by the prologue, on the device): the CPU
    kernel's bits with the same lr as a number, step after step as the lr changes."""
    tables = SPARSE_TABLES[:3]
    twins = SparseTwins(SPARSE_OPTIMIZERS["AdamW-weight_decay-amsgrad"], tables, dtype, backend)
    twins.step(sparse_grads(tables, 0, dtype))  # creates the state
    lr = torch.zeros((), dtype=torch.float64)
    for step in range(1, 6):
        rate = 0.02 / step
        lr.fill_(rate)
        for params, optimizer, step_lr in ((twins.cpu_params, twins.cpu, rate), (twins.host_params, twins.host, lr)):
            for p, grad in zip(params, sparse_grads(tables, step, dtype)):
                p.grad = grad
            backends.get(optimizer.param_groups[0]["backend"]).sparse_adam_update(
                _sparse_batch(optimizer, params), _sparse_hyper(optimizer), step_lr)
        twins.check(f"step {step}")


def _one_table_twins(dtype=torch.float32, backend="cuda_host"):
    twins = SparseTwins(SPARSE_OPTIMIZERS["SparseAdam"], [((4, 3), 1)], dtype, backend)
    twins.step([torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 3, dtype=dtype), (4, 3))])
    p = twins.host_params[0]
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 3, dtype=dtype), (4, 3))
    return twins, p


def test_sparse_adam_refuses_16_bit_params_before_native_code():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.bfloat16))
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 3, dtype=torch.bfloat16), (4, 3))
    with pytest.raises(RuntimeError, match="cannot run lazy .*float32 and float64"):
        fusedopt.SparseAdam([p], backend="cuda_host").step()
    # the backend itself, handed a 16-bit batch: Python refuses it before the kernel sees it
    opt = fusedopt.SparseAdam([p], backend="reference")
    opt.step()
    before = (p.detach().clone(), opt.state[p]["step"].clone())
    batch = _sparse_batch(opt, [p])
    with pytest.raises(RuntimeError, match="float32 and float64 params, not torch.bfloat16"):
        backends.get("cuda_host").sparse_adam_update(batch, _sparse_hyper(opt), 0.01)
    # and the native entry point, called directly, refuses it too (ValueError: std::invalid_argument)
    workspace = torch.empty(host.cuda_sparse_adam_workspace_bytes(1), dtype=torch.uint8)
    hyper = HOST_KINDS.hyper("adam", _sparse_hyper(opt))
    with pytest.raises(ValueError, match="float32 and float64 params only"):
        host.cuda_sparse_adam(hyper, batch.table_address(), 1, 3, 0.01, 0, workspace.data_ptr(), workspace.numel(),
                              0, 0)
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["step"], before[1])
    assert not sparse_launches("prologue") and not sparse_launches("rows")


@pytest.mark.parametrize("problem", ["workspace-too-small", "workspace-misaligned", "lr-tensor-float32",
                                     "lr-tensor-two-values"])
def test_sparse_adam_bad_arguments_change_nothing(problem):
    twins, p = _one_table_twins()
    state = twins.host.state[p]
    before = {key: value.clone() for key, value in [("param", p.detach()), *state.items()]}
    batch, hyper = _sparse_batch(twins.host, [p]), _sparse_hyper(twins.host)
    host.host_clear_launch_log()
    if problem.startswith("lr-tensor"):
        lr = torch.tensor([0.01] * (2 if problem == "lr-tensor-two-values" else 1),
                          dtype=torch.float32 if problem == "lr-tensor-float32" else torch.float64)
        with pytest.raises(RuntimeError, match="lr_tensor must be a one-element float64 tensor"):
            backends.get("cuda_host").sparse_adam_update(batch, hyper, lr)
    else:
        from fusedopt.backends.native import cuda_sparse_adam_arguments

        needed = host.cuda_sparse_adam_workspace_bytes(1)
        buffer = torch.empty(needed + 16, dtype=torch.uint8)
        address, size = (buffer.data_ptr(), needed - 8) if problem == "workspace-too-small" else (
            buffer.data_ptr() + 8, needed)
        with pytest.raises(ValueError, match="workspace must be 16-byte aligned"):
            host.cuda_sparse_adam(*cuda_sparse_adam_arguments(HOST_KINDS, batch, hyper, 0.01), address,
                                  size, 0, 0)
    assert not host.host_launch_log()
    assert torch.equal(p, before["param"])
    for key, value in state.items():
        assert_same_bits(value, before[key], f"state {key!r}")


@pytest.mark.parametrize("bad_row", [4, 6, -1], ids=["past-end", "far", "negative"])
def test_sparse_adam_kernel_never_writes_outside_the_param(bad_row):
    """Defence in depth: Python refuses an index outside the param before any kernel runs
    (test_sparse_adam.py); were one to reach the kernel, its row is skipped, and the rows
    beside it are still updated as the CPU kernel updates them."""
    twins, p = _one_table_twins()
    batch, hyper = _sparse_batch(twins.host, [p]), _sparse_hyper(twins.host)
    bad = torch.tensor([1, bad_row] if bad_row > 1 else [bad_row, 1])
    batch.table[SPARSE_INDEX_ROW] = bad.data_ptr()  # the grad's values are 2 rows: 1 and the bad one
    before = p.detach().clone()
    backends.get("cuda_host").sparse_adam_update(batch, hyper, 0.01)
    twins.guarded.check()
    changed = (p != before).any(1)
    assert changed.tolist() == [False, True, False, False]
    assert int(twins.host.state[p]["step"]) == 2
