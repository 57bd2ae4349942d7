"""The native half of the optimizer registry: every optimizer header
(csrc/include/fusedopt/optimizers/<kind>.h) agrees with its Python spec (fusedopt/optim),
hyper-parameters reach C++ by name only, and the build finds a new header by itself."""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedopt  # noqa: F401  (registers every optimizer's spec)
from fusedopt._native import load_error, native
from fusedopt.backends.native import NativeKinds
from fusedopt.optim._spec import elementwise_kinds as registered  # kinds with a math header

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(bool(load_error), reason=f"fusedopt._C is not built ({load_error})")

TYPE_NAMES = {float: "float", bool: "bool"}


def native_kinds():
    return native.hyperparameters()


def test_every_spec_has_a_native_optimizer_and_the_reverse():
    assert set(native_kinds()) == set(registered()), (
        "kinds with a math header (csrc/include/fusedopt/optimizers/) and kinds with a Python spec differ")
    assert native.build_info()["optimizers"] == sorted(native_kinds())  # as `python -m fusedopt` reports them


@pytest.mark.parametrize("kind", sorted(registered()))
def test_native_hyperparameters_are_the_specs(kind):
    spec = registered()[kind]
    assert native_kinds()[kind] == [(name, TYPE_NAMES[t]) for name, t in spec.hyperparameters]
    cls = getattr(native.optimizers, kind)
    assert cls.step_counter == spec.step_counter
    # An optimizer with a first-step rule writes its new state without reading it (SGD's buf = grad).
    assert (not cls.reads_state_on_first_step) == spec.first_step_rule
    if cls.step_dependent:
        assert cls.step_counter, "coefficients that follow the step need a step counter"


def option_grid(spec):
    """Every combination of the bools, with each float at 0, a typical value and 1 (the
    values that switch states on or off, such as momentum != 0, are among them)."""
    names = [name for name, _ in spec.hyperparameters]
    choices = [(False, True) if t is bool else (0.0, 0.9, 1.0) for _, t in spec.hyperparameters]
    for values in itertools.product(*choices):
        yield dict(zip(names, values))


@pytest.mark.parametrize("kind", sorted(registered()))
def test_native_state_count_is_the_specs(kind):
    spec = registered()[kind]
    cls = getattr(native.optimizers, kind)
    counted = 0
    for hyper in option_grid(spec):
        assert cls(hyper).states() == len(spec.state_keys(hyper)), hyper
        counted += 1
    assert counted >= 2


@pytest.mark.parametrize("kind", sorted(registered()))
def test_hyperparameters_bind_by_name_in_any_order(kind):
    spec = registered()[kind]
    names = spec.hyper_names()
    values = {name: (True if t is bool else 0.25 + i) for i, (name, t) in enumerate(spec.hyperparameters)}
    cls = getattr(native.optimizers, kind)
    forward, backward = cls(values), cls(dict(reversed(list(values.items()))))
    keywords = cls(**values)
    for name in names:
        assert getattr(forward, name) == getattr(backward, name) == getattr(keywords, name) == values[name]
    assert repr(forward).startswith(f"{kind}(") and all(name in repr(forward) for name in names)


SGD = dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)


@pytest.mark.parametrize("values, error, message", [
    ({k: v for k, v in SGD.items() if k != "dampening"}, ValueError, "sgd: missing hyper-parameter 'dampening'"),
    ({**SGD, "lr": 0.1}, ValueError, "sgd: unknown hyper-parameter 'lr'"),
    ({**SGD, "dampening_": 0.0}, ValueError, "sgd: unknown hyper-parameter 'dampening_'"),
    ({**SGD, "nesterov": 1.0}, TypeError, "'nesterov' must be a bool, not float"),
    ({**SGD, "momentum": True}, TypeError, "'momentum' must be a float, not bool"),
    ({**SGD, "momentum": "0.9"}, TypeError, "'momentum' must be a float, not str"),
])
def test_a_missing_unknown_or_mistyped_name_is_refused(values, error, message):
    with pytest.raises(error, match=re.escape(message)):
        native.optimizers.sgd(values)


def test_an_int_is_a_float():
    assert native.optimizers.sgd({**SGD, "momentum": 1}).momentum == 1.0


class _Module:
    """A native module whose sgd header names its hyper-parameters differently from the spec."""
    __name__ = "fake_native"

    def __init__(self, described):
        self._described = described
        self.optimizers = native.optimizers

    def hyperparameters(self):
        return self._described


def test_a_header_that_disagrees_with_its_spec_is_an_error_naming_both():
    described = dict(native.hyperparameters())
    described["sgd"] = [("dampening", "float"), ("momentum", "float")] + described["sgd"][2:]
    with pytest.raises(RuntimeError, match=r"native hyper-parameters \(dampening, momentum, .*\) differ from the "
                                          r"Python spec's \(momentum, dampening, "):
        NativeKinds(_Module(described)).hyper("sgd", SGD)
    del described["sgd"]
    with pytest.raises(RuntimeError, match="no native class"):
        NativeKinds(_Module(described)).hyper("sgd", SGD)


# --------------------------------------------------------------------------- the build's list
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_a_new_header_joins_the_generated_list_with_no_other_edit(tmp_path):
    """Configure a copy of the sources with one more optimizer header: the generated list
    and the per-optimizer CPU and CUDA units include it; nothing else was edited."""
    import pybind11

    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "CMakeLists.txt", source)
    shutil.copytree(ROOT / "csrc", source / "csrc")
    sgd = (source / "csrc/include/fusedopt/optimizers/sgd.h").read_text()
    (source / "csrc/include/fusedopt/optimizers/probe_kind.h").write_text(
        sgd.replace("struct sgd ", "struct probe_kind ").replace("FUSEDOPT_SGD_", "FUSEDOPT_PROBE_KIND_"))
    build = tmp_path / "build"
    result = subprocess.run(["cmake", f"-S{source}", f"-B{build}", f"-DPython_EXECUTABLE={sys.executable}",
                             f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DFUSEDOPT_NO_CUDA=ON"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    generated = build / "generated"
    listed = (generated / "include/fusedopt/optimizer_list.h").read_text()
    kinds = sorted(path.stem for path in (source / "csrc/include/fusedopt/optimizers").glob("*.h"))
    assert re.search(r"#define FUSEDOPT_FOR_EACH_OPTIMIZER\(X\)" + "".join(rf"\s*X\({k}\)" for k in kinds), listed)
    for kind in kinds:
        assert f'#include "fusedopt/optimizers/{kind}.h"' in listed
        assert f"FUSEDOPT_INSTANTIATE_CPU_UPDATE({kind})" in (generated / f"cpu/update_{kind}.cpp").read_text()
        assert f"FUSEDOPT_INSTANTIATE_CUDA_UPDATE({kind})" in (generated / f"cuda/update_{kind}.cu").read_text()
    assert "probe_kind" in kinds


def test_a_table_with_other_state_rows_than_the_kernels_read_is_refused():
    """The kernels index a table's state rows by the count their header gives for the options:
    a batch carrying another count (a spec that disagreed with its header) is refused before
    any native call, so no address past the table is read."""
    import array

    from fusedopt._layout import TensorBatch, UpdateConfig
    from fusedopt.backends.native import CPUBackend

    p, g, buf = torch.zeros(4), torch.ones(4), torch.zeros(4)
    table = array.array("q", [4, p.data_ptr(), g.data_ptr(), 0, buf.data_ptr()])  # one state row
    batch = TensorBatch([p], [g], None, [[buf]], p.device, p.dtype, table, 1)
    hyper = dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)  # reads none
    with pytest.raises(RuntimeError, match="state rows"):
        CPUBackend().update("sgd", batch, UpdateConfig(hyper, 0.1))
    assert torch.equal(p, torch.zeros(4))
    CPUBackend().update("sgd", batch, UpdateConfig(dict(hyper, momentum=0.9), 0.1, first_step=True))
    assert torch.allclose(p, torch.full((4,), -0.1)) and torch.equal(buf, g)
