"""Smoke tests of the benchmark harness (fusedopt.bench, its `bars` subcommand and the
bench/cpu_bars.py wrapper), and exact tests of the bytes it derives from each spec.

They run the real harness in-process at the hidden --tiny scale and check
the shape of what it reports, never how fast anything was.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedopt
import fusedopt.optim
from fusedopt.bench import bars as cpu_bars
from fusedopt.bench.__main__ import main
from fusedopt.bench.contenders import TORCH_VARIANTS, fusedopt_backends, torch_contenders
from fusedopt.bench.measure import round_robin, traffic
from fusedopt.bench.workloads import (GPT2_SMALL, GPT2_XL, all_cases, build_workloads, cases_by_key,
                                      default_shape_names, families, gpt2_parameter_shapes, optimizer_case)

REPO = Path(__file__).resolve().parents[1]
# One thread: tiny steps gain nothing from two, and a busy machine would make each
# parallel region wait for a descheduled thread.
TINY = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]
STEPS = 2

ENVIRONMENT_TYPES = {
    "device": str, "device_name": str, "cpu_model": str, "num_threads": int,
    "load_average_start": float, "load_average_end": float,
    "torch_version": str, "command_line": str, "date": str, "platform": str, "python_version": str,
}
ROW_TYPES = {
    "shape": str, "dtype": str, "optimizer": str, "optimizer_label": str, "implementation": str,
    "kind": str, "variant": str, "num_tensors": int, "numel": int, "bytes_per_element": int,
    "median_ms": float, "min_ms": float, "samples_ms": list, "gbps": float, "pct_of_copy": float,
    "speedup_vs": dict, "group": int,
}
TRAFFIC_TYPES = {
    "optimizer": str, "optimizer_label": str, "dtype": str, "bytes_per_element": int, "formula": str,
}
COPY_TYPES = {"tensor_bytes": int, "bytes_moved": int, "median_ms": float, "gbps": float}


def assert_fields(record, types):
    for key, expected in types.items():
        assert key in record, f"missing key {key!r}"
        assert isinstance(record[key], expected), f"{key}: {record[key]!r} is not {expected.__name__}"


def assert_positive_finite(value, what):
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """--threads changes torch's global setting; give other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of every optimizer, shape and dtype, shared by the schema tests."""
    path = tmp_path_factory.mktemp("bench") / "result.json"
    assert main(TINY + ["--shapes", "large,gpt2-small,many-small,host-overhead", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_document_has_the_documented_sections(tiny_run):
    assert tiny_run["schema_version"] == 1
    assert set(tiny_run) == {"schema_version", "environment", "settings", "copy_bandwidth",
                             "traffic", "workloads", "results", "skipped"}
    assert_fields(tiny_run["environment"], ENVIRONMENT_TYPES)
    assert tiny_run["environment"]["command_line"].startswith("python -m fusedopt.bench --device cpu")
    assert_fields(tiny_run["copy_bandwidth"], COPY_TYPES)
    assert_positive_finite(tiny_run["copy_bandwidth"]["gbps"], "copy GB/s")
    for entry in tiny_run["traffic"]:
        assert_fields(entry, TRAFFIC_TYPES)
        assert entry["formula"].endswith(f"= {entry['bytes_per_element']} B/elem")
    assert tiny_run["settings"]["steps"] == STEPS
    assert tiny_run["skipped"] == [], "every contender should step float32 and bfloat16 on the CPU"


def test_every_row_is_complete_and_every_number_positive_and_finite(tiny_run):
    assert tiny_run["results"]
    for row in tiny_run["results"]:
        assert_fields(row, ROW_TYPES)
        assert len(row["samples_ms"]) == STEPS
        for key in ("median_ms", "min_ms", "gbps", "pct_of_copy"):
            assert_positive_finite(row[key], f"{row['implementation']} {key}")
        for sample in row["samples_ms"]:
            assert_positive_finite(sample, f"{row['implementation']} sample")
        if row["optimizer"] not in ("lion", "lamb"):  # Lion and LAMB are not in torch.optim
            assert row["speedup_vs"], "every row is compared with at least one torch variant"
        for variant, ratio in row["speedup_vs"].items():
            assert_positive_finite(ratio, f"{row['implementation']} speed-up vs {variant}")


def test_rows_cover_every_shape_dtype_and_optimizer(tiny_run):
    measured = {(row["shape"], row["dtype"], row["optimizer"]) for row in tiny_run["results"]}
    for shape in ("large", "gpt2-small", "many-small"):
        for dtype in ("float32", "bfloat16"):
            for case in cases_by_key():
                assert (shape, dtype, case) in measured
    host_rows = {row["optimizer"] for row in tiny_run["results"] if row["shape"] == "host-overhead"}
    assert host_rows == {"adam"}


def test_torch_fused_is_timed_exactly_where_torch_offers_it(tiny_run):
    fused_cases = {row["optimizer"] for row in tiny_run["results"] if row["implementation"] == "torch[fused]"}
    assert fused_cases == {"adagrad", "adam", "adamw", "sgd"}  # torch 2.13's fused CPU optimizers
    for row in tiny_run["results"]:
        if row["optimizer"] in ("lion", "lamb"):  # not in torch.optim: nothing to compare with
            assert row["speedup_vs"] == {}
            continue
        torch_variants = {"for-loop", "foreach"} | ({"fused"} if row["optimizer"] in fused_cases else set())
        assert set(row["speedup_vs"]) == torch_variants


def test_every_available_fusedopt_backend_is_timed(tiny_run):
    implementations = {row["implementation"] for row in tiny_run["results"]}
    for backend in fusedopt_backends(torch.device("cpu")):
        assert f"fusedopt[{backend}]" in implementations
        assert f"fusedopt[{backend},optimized_update]" in implementations
    optimized = {
        row["optimizer"] for row in tiny_run["results"] if "optimized_update" in row["implementation"]
    }
    assert optimized == {"adamw"}


def test_backend_option_restricts_the_fusedopt_rows(tmp_path):
    path = tmp_path / "result.json"
    main(TINY + ["--shapes", "large", "--dtypes", "float32", "--optimizers", "sgd",
                 "--backend", "reference", "--json", str(path)])
    rows = json.loads(path.read_text())["results"]
    assert {row["implementation"] for row in rows if row["kind"] == "fusedopt"} == {"fusedopt[reference]"}


def test_terminal_table_states_traffic_copy_bandwidth_and_speedups(capsys):
    main(TINY + ["--shapes", "large", "--dtypes", "float32", "--optimizers", "adam,sgd"])
    out = capsys.readouterr().out
    assert "copy bandwidth:" in out
    assert "reads p,g,m,v + writes p,m,v = 7 x 4 B = 28 B/elem" in out
    assert "reads p,g,buf + writes p,buf = 5 x 4 B = 20 B/elem" in out
    header = next(line for line in out.splitlines() if line.startswith("dtype"))
    assert header.split() == ["dtype", "optimizer", "implementation", "ms/step", "GB/s", "%", "copy",
                              "vs", "for-loop", "vs", "foreach", "vs", "fused"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bandwidth.png"
    main(TINY + ["--shapes", "large", "--dtypes", "float32", "--optimizers", "adam", "--plot", str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arguments", [["--optimizers", "no-such-optimizer"], ["--shapes", "huge"],
                                       ["--dtypes", "int8"], ["--steps", "0"]])
def test_bad_options_are_rejected(arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(TINY + arguments)
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "case, dtype, expected",
    [
        ("adam", torch.float32, 28),
        ("adam", torch.bfloat16, 14),
        ("adamw", torch.float32, 28),
        ("sgd", torch.float32, 20),
        ("rmsprop", torch.float32, 20),
        ("rmsprop-centered", torch.float32, 36),
        ("rmsprop-centered", torch.bfloat16, 18),
    ],
)
def test_bytes_per_element_of_the_timed_cases(case, dtype, expected):
    assert traffic(cases_by_key()[case], dtype).bytes_per_element == expected


# Written out by hand from each optimizer's math, not from its spec: (class, options, dtype,
# master weights, GradScaler) -> (bytes read, bytes written, per-tensor step counter bytes).
HAND_WRITTEN_TRAFFIC = [
    # p, g, m, v read; p, m, v written (DESIGN.md: fp32 Adam moves 16 + 12 bytes); step counter
    ("Adam", {}, torch.float32, False, False, (16, 12, 8)),
    ("AdamW", {}, torch.float32, False, False, (16, 12, 8)),
    ("Adam", {}, torch.bfloat16, False, False, (8, 6, 8)),
    ("Adam", {"amsgrad": True}, torch.float32, False, False, (20, 16, 8)),  # + vmax both ways
    ("Adam", {}, torch.float32, False, True, (16, 16, 8)),  # GradScaler writes the unscaled grad
    # master weights: g (2 B) and fp32 m, v, master read; p (2 B) and fp32 m, v, master written
    ("Adam", {}, torch.bfloat16, True, False, (14, 14, 8)),
    ("Adam", {}, torch.float32, True, False, (16, 12, 8)),  # fp32 params have no master copy
    ("SGD", {"momentum": 0.9}, torch.float32, False, False, (12, 8, 0)),  # p, g, buf; p, buf; no counter
    ("SGD", {}, torch.float32, False, False, (8, 4, 0)),  # p, g; p
    ("SGD", {"momentum": 0.9}, torch.float16, True, False, (10, 10, 0)),  # g, buf, master; p, buf, master
    ("RMSprop", {}, torch.float32, False, False, (12, 8, 8)),  # p, g, sq; p, sq
    ("RMSprop", {"momentum": 0.9}, torch.float32, False, False, (16, 12, 8)),  # + buf
    ("RMSprop", {"centered": True, "momentum": 0.9}, torch.float32, False, False, (20, 16, 8)),  # + gavg, buf
    ("RMSprop", {"centered": True, "momentum": 0.9}, torch.bfloat16, True, False, (18, 18, 8)),
]


@pytest.mark.parametrize("class_name, options, dtype, master, scaler, expected", HAND_WRITTEN_TRAFFIC,
                         ids=[f"{c}{o or ''}-{str(d)[6:]}{'-master' if m else ''}{'-scaler' if s else ''}"
                              for c, o, d, m, s, _ in HAND_WRITTEN_TRAFFIC])
def test_traffic_derived_from_the_spec_matches_the_hand_count(class_name, options, dtype, master, scaler, expected):
    moved = traffic(optimizer_case(getattr(fusedopt, class_name), options), dtype, master, grad_scaler=scaler)
    assert (moved.read_bytes, moved.write_bytes, moved.bytes_per_tensor) == expected
    assert moved.formula.endswith(f"= {moved.bytes_per_element} B/elem")


# Issue 11's family, by hand from each optimizer's math: (class, options, dtype, master
# weights) -> (bytes read, bytes written, per-tensor bytes: step counter and scalar states,
# each read and written once).
FAMILY_TRAFFIC = [
    ("Adagrad", {}, torch.float32, False, (12, 8, 8)),  # p, g, sum; p, sum
    ("Adagrad", {}, torch.bfloat16, True, (10, 10, 8)),  # g, sum, master; p, sum, master
    ("Adadelta", {}, torch.float32, False, (16, 12, 8)),  # p, g, square_avg, acc_delta; p, both
    ("Adamax", {}, torch.float32, False, (16, 12, 8)),  # p, g, exp_avg, exp_inf; p, both
    ("RAdam", {}, torch.float32, False, (16, 12, 8)),  # p, g, exp_avg, exp_avg_sq; p, both
    ("Rprop", {}, torch.float32, False, (16, 12, 8)),  # p, g, prev, step_size; p, both
    ("Lion", {}, torch.float32, False, (12, 8, 0)),  # p, g, exp_avg; p, exp_avg: SGD momentum's bytes
    ("Lion", {}, torch.float16, False, (6, 4, 0)),
    # the per-tensor scalar states are read and written once per tensor, like the step counter
    ("ASGD", {}, torch.float32, False, (12, 8, 24)),  # p, g, ax; p, ax; step, eta, mu per tensor
    ("NAdam", {}, torch.float32, False, (16, 12, 16)),  # p, g, exp_avg, exp_avg_sq; p, both; step, mu_product
]


@pytest.mark.parametrize("class_name, options, dtype, master, expected", FAMILY_TRAFFIC,
                         ids=[f"{c}-{str(d)[6:]}{'-master' if m else ''}" for c, _, d, m, _ in FAMILY_TRAFFIC])
def test_traffic_of_the_family_matches_the_hand_count(class_name, options, dtype, master, expected):
    if not hasattr(fusedopt, class_name):
        pytest.skip(f"fusedopt.{class_name} is not in this checkout")
    moved = traffic(optimizer_case(getattr(fusedopt, class_name), options), dtype, master)
    assert (moved.read_bytes, moved.write_bytes, moved.bytes_per_tensor) == expected
    assert moved.formula.endswith(f"= {moved.bytes_per_element} B/elem")


def test_lion_moves_the_bytes_of_its_stand_in():
    """Lion's throughput bar is against SGD with momentum because both move p, g and one state."""
    lion, stand_in = cases_by_key()["lion"], cases_by_key()[cpu_bars.STAND_INS["lion"][0]]
    for dtype in (torch.float32, torch.bfloat16):
        assert traffic(lion, dtype).bytes_per_element == traffic(stand_in, dtype).bytes_per_element


def test_fp32_adam_formula_is_printed_as_before():
    moved = traffic(cases_by_key()["adam"], torch.float32)
    assert moved.formula == "reads p,g,m,v + writes p,m,v = 7 x 4 B = 28 B/elem"
    master = traffic(cases_by_key()["adam"], torch.bfloat16, master_weights=True)
    assert master.formula == "reads g,m,v,p32 + writes p,m,v,p32 = 2 x 2 B + 6 x 4 B = 28 B/elem"


@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("key", sorted(cases_by_key()))
def test_counted_state_is_the_state_the_optimizer_keeps(key, master):
    """The tensors counted per element are exactly the per-element state one step creates."""
    case = cases_by_key()[key]
    dtype = torch.bfloat16 if master else torch.float32
    param = torch.zeros(3, dtype=dtype, requires_grad=True)
    param.grad = torch.ones_like(param)
    optimizer = case.optimizer_class([param], **case.hyper, backend="reference", master_weights=master)
    optimizer.step()
    kept = {name for name, value in optimizer.state[param].items() if value.numel() == param.numel()}
    moved = traffic(case, dtype, master)
    assert {name for name, _ in moved.writes} - {"param"} == kept
    assert ("step" in optimizer.state[param]) == (moved.bytes_per_tensor > 0)


def test_every_exported_optimizer_class_is_benchmarked():
    # Element-wise ones by the harness; Adafactor (the factored kernel) by fusedopt/bench/adafactor.py,
    # SparseAdam (sparse grads only) by fusedopt/bench/sparse_adam.py.
    classes = {name for name in fusedopt.optim.__all__
               if getattr(getattr(fusedopt.optim, name), "spec", None) is not None
               and getattr(fusedopt.optim, name).spec.kernel == "elementwise"
               and not getattr(getattr(fusedopt.optim, name), "sparse_grads_only", False)}  # sparse_adam.py's bar
    assert {case.class_name for case in all_cases()} == classes
    assert set(families()) == {name.lower() for name in classes}


def test_gpt2_shapes_have_the_published_parameter_counts():
    count = lambda config: sum(math.prod(shape) for shape in gpt2_parameter_shapes(config))  # noqa: E731
    assert count(GPT2_SMALL) == 124_439_808
    assert count(GPT2_XL) == 1_557_611_200


def test_cpu_workload_sizes():
    names = ["large", "many-small", "host-overhead"]
    full = {workload.name: workload for workload in build_workloads(names, torch.device("cpu"), "full")}
    assert (full["large"].num_tensors, full["large"].numel) == (1, 20_000_000)
    assert (full["many-small"].num_tensors, full["many-small"].numel) == (200, 20_000_000)
    assert (full["host-overhead"].num_tensors, full["host-overhead"].numel) == (1_000, 8_000)
    quick = build_workloads(["large"], torch.device("cpu"), "quick")[0]
    assert quick.numel == 2_000_000


def test_round_robin_alternates_and_rotates_the_first_contender():
    calls = []

    class CountingClock:
        def time_ms(self, call):
            call()
            return 1.0

        def synchronize(self):
            pass

    contenders = [lambda name=name: calls.append(name) for name in "abc"]
    samples = round_robin(contenders, warmup=1, steps=3, clock=CountingClock())
    assert samples == [[1.0] * 3] * 3
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"


BARS_TINY = ["bars", "--tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_bars(tmp_path_factory):
    """One tiny run of every bar: (exit status, JSON document)."""
    path = tmp_path_factory.mktemp("bars") / "bars.json"
    status = main(BARS_TINY + ["--json", str(path)])
    return status, json.loads(path.read_text())


def test_bars_subcommand_measures_every_bar(tiny_bars):
    status, document = tiny_bars
    verdicts = document["bars"]
    assert [verdict["bar"] for verdict in verdicts] == [bar.name for bar in cpu_bars.all_bars()]
    assert status == (0 if all(verdict["passed"] for verdict in verdicts) else 1)
    for verdict in verdicts:  # a bar that could not be measured has no ratio
        assert_positive_finite(verdict["ratio"], verdict["bar"])
        assert verdict["ratio"] == pytest.approx(verdict["fusedopt_ms"] / verdict["baseline_ms"])
    assert len(document["benchmarks"]) == 1
    benchmark = document["benchmarks"][0]
    assert benchmark["environment"]["command_line"].startswith("python -m fusedopt.bench bars --tiny")
    assert benchmark["skipped"] == []
    assert benchmark["settings"]["bars"] == [bar.name for bar in cpu_bars.all_bars()]


def test_each_bar_times_exactly_its_own_contenders_together(tiny_bars):
    """A bar's unit holds its fusedopt row and its baseline's rows, nothing else (no third
    contender between the two compared), all in one round-robin group."""
    _, document = tiny_bars
    rows = document["benchmarks"][0]["results"]
    for unit, (bar, verdict) in enumerate(zip(cpu_bars.all_bars(), document["bars"])):
        timed = {(row["optimizer"], row["implementation"]) for row in rows if row["unit"] == unit}
        assert {row["group"] for row in rows if row["unit"] == unit} == {0}
        assert {row["shape"] for row in rows if row["unit"] == unit} == {bar.shape}
        expected = {(bar.subject.optimizer, bar.subject.implementation)}
        if bar.baseline.implementation == cpu_bars.TORCH_FASTEST:
            baseline_case = cases_by_key()[bar.baseline.optimizer]
            torch_rows = {(bar.baseline.optimizer, c.label) for c in torch_contenders(baseline_case, TORCH_VARIANTS)}
            if torch_rows:
                assert {"for-loop", "foreach"} <= {label[6:-1] for _, label in torch_rows}
            else:  # torch.optim lacks it (Lion): its foreach-ops implementation
                torch_rows = {(bar.baseline.optimizer, "torch-ops[foreach]")}
            expected |= torch_rows
            fastest = min((row for row in rows if row["unit"] == unit and row["kind"] == "torch"),
                          key=lambda row: row["median_ms"])
            assert verdict["baseline"] == fastest["implementation"]
            assert verdict["baseline_ms"] == fastest["median_ms"]
        else:
            expected.add((bar.baseline.optimizer, bar.baseline.implementation))
            assert verdict["baseline"] == bar.baseline.implementation
        assert timed == expected, bar.name


# Issue 11's bars, written out by hand: family -> (bar case, fusedopt row, throughput
# baseline (case, row), its limit). Every family's host-overhead bar is against torch's
# fastest implementation of the throughput baseline's case, at 0.25.
ISSUE_BARS = {
    "adam": ("adam", "fusedopt[cpu]", ("adam", "torch[fused]"), 1.05),
    "adamw": ("adamw", "fusedopt[cpu,optimized_update]", ("adamw", "torch[fused]"), 1.05),
    "sgd": ("sgd", "fusedopt[cpu]", ("sgd", "torch[fused]"), 1.05),
    "rmsprop": ("rmsprop-centered", "fusedopt[cpu]", ("rmsprop-centered", "torch[foreach]"), 1 / 3),
    "adagrad": ("adagrad", "fusedopt[cpu]", ("adagrad", "torch[fused]"), 1.05),
    **{family: (family, "fusedopt[cpu]", (family, "torch[foreach]"), 1 / 3)
       for family in ("adadelta", "adamax", "asgd", "nadam", "radam", "rprop")},
    "lion": ("lion", "fusedopt[cpu]", ("sgd", "fusedopt[cpu]"), 1.05),  # torch has no Lion
}
# Host overhead is against torch's fastest implementation of the throughput baseline's case,
# except where torch.optim lacks the optimizer and fusedopt.bench.torch_ops writes it in foreach ops.
HOST_CASE = {"lion": "lion"}


@pytest.mark.parametrize("family", sorted(ISSUE_BARS))
def test_bars_of_the_issues_optimizers(family):
    if family not in families():
        pytest.skip(f"{family} is not registered in this checkout")
    case, row, (baseline_case, baseline_row), limit = ISSUE_BARS[family]
    bars = {bar.shape: bar for bar in cpu_bars.select_bars([family])}
    assert sorted(bars) == ["host-overhead", "large", "many-small"]
    for shape in ("large", "many-small"):
        assert bars[shape] == cpu_bars.Bar(shape, cpu_bars.Side(case, row),
                                           cpu_bars.Side(baseline_case, baseline_row), limit)
    host = cpu_bars.Side(HOST_CASE.get(family, baseline_case), cpu_bars.TORCH_FASTEST)
    assert bars["host-overhead"] == cpu_bars.Bar("host-overhead", cpu_bars.Side(case, row), host, 0.25)


def test_every_registered_optimizer_has_its_three_bars():
    """A new optimizer gets its bars from the registry, with no edit to bars.py."""
    for family in families():
        bars = cpu_bars.select_bars([family])
        assert sorted(bar.shape for bar in bars) == ["host-overhead", "large", "many-small"], family
        for bar in bars:
            assert bar.subject.implementation.startswith("fusedopt[cpu")
            assert cpu_bars.contenders_of(bar.subject) and cpu_bars.contenders_of(bar.baseline), bar.name


def test_lions_host_bar_times_lion_in_torch_foreach_ops():
    """Lion's host-overhead baseline is Lion itself, written with torch's foreach ops (torch.optim
    has none), not torch's fused SGD."""
    (bar,) = cpu_bars.select_bars(["lion"], ["host-overhead"])
    assert [(case.key, contender.label) for case, contender in cpu_bars.contenders_of(bar.baseline)] == [
        ("lion", "torch-ops[foreach]")]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_lion_follows_the_paper(weight_decay):
    """The torch-ops Lion a bar is held to is Lion: 25 float64 steps on two params equal the
    paper's pseudo-code (tests/optimizer_specs.PaperLion) to rounding."""
    from optimizer_specs import PaperLion
    from fusedopt.bench.torch_ops import ForeachLion

    torch.manual_seed(0)
    start = [torch.randn(7, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    runs = []
    for make in (ForeachLion, PaperLion):
        params = [t.clone().requires_grad_() for t in start]
        optimizer = make(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(1)
        for _ in range(25):
            for p in params:
                p.grad = torch.randn(p.shape, dtype=torch.float64, generator=generator)
            optimizer.step()
        runs.append([p.detach() for p in params])
    for ours, paper, first in zip(*runs, start):
        torch.testing.assert_close(ours, paper, rtol=1e-12, atol=1e-12)
        assert not torch.equal(ours, first)  # it trained


def test_an_optimizer_torch_lacks_needs_a_stand_in(monkeypatch):
    monkeypatch.setattr(cpu_bars, "STAND_INS", {})
    with pytest.raises(ValueError, match="STAND_INS"):
        cpu_bars.derive_bars("lion")


def test_bars_filter_and_list(tmp_path, capsys):
    assert main(["bars", "--list", "--optimizers", "lion,adagrad", "--shapes", "large"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split(":")[0] for line in listed] == ["large Adagrad()", "large Lion()"]
    path = tmp_path / "bars.json"
    main(BARS_TINY + ["--optimizers", "lion", "--shapes", "large", "--json", str(path)])
    document = json.loads(path.read_text())
    assert [verdict["bar"] for verdict in document["bars"]] == [
        "large Lion(): fusedopt[cpu] / SGD(momentum=0.9) fusedopt[cpu]"]
    rows = document["benchmarks"][0]["results"]
    assert {(row["optimizer"], row["implementation"]) for row in rows} == {("lion", "fusedopt[cpu]"),
                                                                           ("sgd", "fusedopt[cpu]")}
    assert all(row["speedup_vs"] == {} for row in rows)  # no torch row in this unit


@pytest.mark.parametrize("arguments", [["--optimizers", "no-such-optimizer"], ["--shapes", "gpt2-small"]])
def test_bars_bad_options_are_rejected(arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(["bars", "--list"] + arguments)
    assert exit_info.value.code == 2


def test_cpu_bars_script_is_the_bars_subcommand():
    run = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_bars.py"), "--help"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m fusedopt.bench bars")


def test_many_4096_is_ten_thousand_tensors_of_4096_elements_and_runs_by_default_on_gpus_only():
    full = build_workloads(["many-4096"], torch.device("cpu"), "full")[0]
    assert full.shapes == ((4_096,),) * 10_000
    assert build_workloads(["many-4096"], torch.device("cpu"), "tiny")[0].shapes == ((4_096,),) * 20
    assert "many-4096" in default_shape_names(torch.device("cuda"))
    assert "many-4096" not in default_shape_names(torch.device("cpu"))


def test_torch_variants_option_restricts_the_torch_rows(tmp_path):
    path = tmp_path / "result.json"
    main(TINY + ["--shapes", "large", "--dtypes", "float32", "--optimizers", "adam",
                 "--torch-variants", "fused", "--json", str(path)])
    document = json.loads(path.read_text())
    assert {row["implementation"] for row in document["results"] if row["kind"] == "torch"} == {"torch[fused]"}
    assert document["settings"]["torch_variants"] == ["fused"]
    assert all(set(row["speedup_vs"]) == {"fused"} for row in document["results"])


def test_master_weights_rows_on_16_bit_params_count_the_fp32_bytes(tmp_path):
    path = tmp_path / "result.json"
    main(TINY + ["--shapes", "large", "--dtypes", "float32,bfloat16", "--optimizers", "adam",
                 "--backend", "reference", "--master-weights", "--json", str(path)])
    document = json.loads(path.read_text())
    rows = {(row["dtype"], row["implementation"]): row for row in document["results"]}
    assert ("float32", "fusedopt[reference,master_weights]") not in rows  # no master copy of fp32 params
    master = rows["bfloat16", "fusedopt[reference,master_weights]"]
    # reads master 4 + g 2 + m 4 + v 4, writes master 4 + p 2 + m 4 + v 4
    assert master["bytes_per_element"] == 28
    assert rows["bfloat16", "fusedopt[reference]"]["bytes_per_element"] == 14
    entries = {(entry["dtype"], entry["master_weights"]): entry for entry in document["traffic"]}
    assert entries["bfloat16", True]["formula"].endswith("= 28 B/elem")
    assert ("float32", True) not in entries
    assert document["settings"]["master_weights"] is True


@pytest.mark.parametrize("case, dtype, expected", [("adam", torch.bfloat16, 28), ("adam", torch.float32, 28),
                                                   ("sgd", torch.float16, 20), ("rmsprop-centered", torch.bfloat16, 36)])
def test_bytes_per_element_with_master_weights(case, dtype, expected):
    assert traffic(cases_by_key()[case], dtype, master_weights=True).bytes_per_element == expected


def test_state_memory_counts_every_state_tensor_of_the_checkpoint(capsys):
    # Each param keeps two moments and a float32 step counter (4 bytes per tensor, torch's
    # layout); bf16 states halve the moments, a master copy adds 4 bytes per element.
    from fusedopt.bench import state_memory

    shapes = gpt2_parameter_shapes(state_memory._GPT2_SMALL["tiny"])
    numel, tensors = sum(torch.Size(s).numel() for s in shapes), len(shapes)
    measured = state_memory.measure("tiny", "cpu")
    expected = {"torch.optim.AdamW, fp32 params": 8, "fusedopt.AdamW, fp32 params, fp32 states": 8,
                "fusedopt.AdamW, fp32 params, bf16 states": 4, "fusedopt.AdamW, bf16 params, bf16 states": 4,
                "fusedopt.AdamW, bf16 params + fp32 master, bf16 states": 8}
    int8_name = "fusedopt.AdamW, fp32 params, int8 states"
    expected = {name: (moments * numel + 4 * tensors) / numel for name, moments in expected.items()}
    # 8-bit states: two code bytes and two float32 absmax per block of 256 per element of a
    # tensor of 4,096 elements or more; float32 moments below; a step counter each
    expected[int8_name] = sum(2 * n + 8 * -(-n // 256) + 4 if n >= 4096 else 8 * n + 4
                              for n in (torch.Size(s).numel() for s in shapes)) / numel
    assert measured.keys() == expected.keys()
    for name in expected:
        assert measured[name] == pytest.approx(expected[name], rel=1e-12), name
    assert state_memory.main(["--scale", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 + (expected[int8_name] <= state_memory.INT8_BAR)
