"""Backend selection (`auto`, FUSEDOPT_BACKEND, names that cannot run), fusedopt.info(),
`python -m fusedopt`, and the native module's independence from libtorch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedopt
import fusedopt.backends
from _compare import assert_params_close, gradients, initial_values, make_params

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop")
KERNEL = {"Adam": "adam", "AdamW": "adam", "SGD": "sgd", "RMSprop": "rmsprop"}


@pytest.fixture
def calls(monkeypatch):
    """Records which registered backend ran each update: {backend name: [op, ...]}."""
    record = {}
    for name in ("reference", "cpu"):
        backend = fusedopt.backends.get(name)
        original = backend.update

        def spy(kind, batch, config, _name=name, _original=original):
            record.setdefault(_name, []).append(kind)
            return _original(kind, batch, config)

        monkeypatch.setattr(backend, "update", spy)
    return record


def one_step(name, backend="auto", momentum=True):
    extra = {"momentum": 0.9} if name in ("SGD", "RMSprop") and momentum else {}
    params = make_params(initial_values(), torch.float32)
    opt = getattr(fusedopt, name)(params, backend=backend, **extra)
    for p, g in zip(params, gradients(steps=1)[0]):
        p.grad = g.float()
    opt.step()
    return params


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_auto_picks_cpu_kernels_on_cpu_tensors(name, calls, monkeypatch):
    monkeypatch.delenv("FUSEDOPT_BACKEND", raising=False)
    assert fusedopt.backends.resolve("auto", torch.device("cpu")).name == "cpu"
    one_step(name)
    assert calls == {"cpu": [KERNEL[name]]}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_environment_variable_overrides_auto(name, calls, monkeypatch):
    monkeypatch.setenv("FUSEDOPT_BACKEND", "reference")
    params = one_step(name)
    assert calls == {"reference": [KERNEL[name]]}
    monkeypatch.delenv("FUSEDOPT_BACKEND")
    assert_params_close(one_step(name, backend="cpu"), params, torch.float32)


def test_environment_variable_does_not_override_explicit_backend(calls, monkeypatch):
    monkeypatch.setenv("FUSEDOPT_BACKEND", "reference")
    one_step("Adam", backend="cpu")
    assert calls == {"cpu": ["adam"]}


def test_environment_variable_invalid_name(monkeypatch):
    monkeypatch.setenv("FUSEDOPT_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="FUSEDOPT_BACKEND='gpu-please'"):
        one_step("Adam")


@pytest.mark.parametrize("bad", ["CPU", "torch", "", None, 3])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_invalid_backend_name_raises_value_error(name, bad):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="backend"):
        getattr(fusedopt, name)([p], backend=bad)
    opt = getattr(fusedopt, name)([p], backend="reference")
    with pytest.raises(ValueError, match="backend"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "backend": bad})


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cuda_backend_on_cpu_tensors_raises_runtime_error(name):
    """Asked for by name, a backend that cannot run says so at construction, and why."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="cuda") as error:
        getattr(fusedopt, name)([p], backend="cuda")
    assert "cpu" in str(error.value)
    opt = getattr(fusedopt, name)([p], backend="cpu")
    with pytest.raises(RuntimeError, match="cuda"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "backend": "cuda"})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_backend_on_cuda_tensors_raises_runtime_error():
    p = torch.nn.Parameter(torch.zeros(3, device="cuda"))
    with pytest.raises(RuntimeError, match="cpu"):
        fusedopt.Adam([p], backend="cpu")


def test_per_group_backends(calls):
    """Each param group runs on its own backend; results are those of a single backend."""
    params = make_params(initial_values(), torch.float32)
    opt = fusedopt.Adam([{"params": params[:2], "backend": "reference"}, {"params": params[2:]}], backend="cpu")
    alone = make_params(initial_values(), torch.float32)
    single = fusedopt.Adam(alone, backend="cpu")
    for step_grads in gradients(steps=3):
        for ps, o in ((params, opt), (alone, single)):
            for p, g in zip(ps, step_grads):
                p.grad = g.float()
            o.step()
    assert calls == {"reference": ["adam"] * 3, "cpu": ["adam"] * 6}
    assert_params_close(params, alone, torch.float32)


def test_available_backends():
    assert set(fusedopt.available_backends("cpu")) >= {"cpu", "reference"}
    assert "cuda" not in fusedopt.available_backends("cpu")


def test_info():
    info = fusedopt.info()
    assert {"version", "cpu_kernels", "cuda_kernels", "triton", "torch", "devices"} <= set(info)
    assert info["version"] == fusedopt.__version__
    assert info["torch"] == torch.__version__
    assert info["cpu_kernels"]["built"] is True
    assert info["devices"]["cpu"]["auto"] == "cpu"
    assert {"cpu", "reference"} <= set(info["devices"]["cpu"]["available"])
    assert isinstance(info["cuda_kernels"]["built"], bool)


def test_python_m_fusedopt_prints_version():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "fusedopt"], env=env, capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert fusedopt.__version__ in result.stdout
    assert "cpu" in result.stdout


def test_native_module_links_no_libtorch():
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd not found")
    from fusedopt import _C

    result = subprocess.run([ldd, _C.__file__], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    linked = result.stdout.lower()
    assert linked.strip()
    for library in ("libtorch", "libc10"):
        assert library not in linked, result.stdout


def test_auto_falls_back_to_reference_with_one_warning(calls, monkeypatch):
    """Where the CPU kernels cannot run, `auto` uses the reference and warns once, saying
    why; asking for `cpu` by name raises RuntimeError with the same reason."""
    monkeypatch.delenv("FUSEDOPT_BACKEND", raising=False)
    monkeypatch.setattr(fusedopt.backends.get("cpu"), "unusable_reason", lambda device: "pretend it was not built")
    with pytest.warns(RuntimeWarning, match="pretend it was not built") as warned:
        one_step("Adam")
        one_step("SGD")
    assert len(warned) == 1
    assert calls == {"reference": ["adam", "sgd"]}
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="pretend it was not built"):
        fusedopt.Adam([p], backend="cpu")
