"""Tests of the benchmark scripts: the clean-room baselines are right; --quick runs write sound reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_rate.numerics import _gram, _host, gram_logdet

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Imports a benchmark script under a unique name (``coding_rate`` would shadow nothing, but be safe)."""
    # The scripts import their siblings (_harness, rate_baselines) by plain name, as they do when run.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    qualified = f"jepa_rate_bench_{name}"
    spec = importlib.util.spec_from_file_location(qualified, BENCH_DIR / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BENCH_DIR / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


cr_bench = _load("coding_rate")
bl = importlib.import_module("rate_baselines")
harness = importlib.import_module("_harness")
ld_bench = _load("logdet")
ts_bench = _load("train_step")
sync_check = _load("cuda_sync_check")


@pytest.fixture(autouse=True)
def _restore_threads() -> Any:
    # The scripts pin torch's thread count for their whole process; here that process is the test run.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# float64 throughout: the only error is rounding in factorizations of well-conditioned matrices (the
# eigenvalues of I + aG are >= 1), far below 1e-9 relative for these sizes.
RTOL = ATOL = 1e-9


def _dside_reference(z: torch.Tensor, eps: float) -> torch.Tensor:
    """R from the eigenvalues of the d x d Gram: independent of the small-side route under test."""
    z64 = z.detach().to(torch.float64)
    n, d = z64.shape[-2:]
    eig = torch.linalg.eigvalsh(z64.mT @ z64).clamp_min(0.0)
    return 0.5 * torch.log1p(d / (n * eps) * eig).sum(-1)


def _features(n: int, d: int, seed: int, *, views: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (views, n, d) if views else (n, d)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 40),
    eps=st.sampled_from([0.05, 0.5, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_baselines_match_float64_reference(n: int, d: int, eps: float, seed: int) -> None:
    z = _features(n, d, seed)
    expected = _dside_reference(z, eps)
    for route in (
        bl.logdet_dside,
        bl.cholesky_dside,
        bl.cholesky_small,
        bl.eigvalsh_small,
        bl.bare_small,
        bl.reference_rate,
    ):
        torch.testing.assert_close(
            route(z, eps), expected, rtol=RTOL, atol=ATOL, msg=f"{route.__name__} at {n}x{d}"
        )


@pytest.mark.parametrize(("n", "d"), [(6, 20), (20, 6)])
def test_baseline_gradients_match_closed_form(n: int, d: int) -> None:
    # dR/dZ = a Z (I + a ZᵀZ)^-1: every baseline's autograd must reproduce it.
    eps = 0.5
    z = _features(n, d, seed=1).requires_grad_(True)
    a = d / (n * eps)
    expected = (
        a * z.detach() @ torch.linalg.inv(torch.eye(d, dtype=torch.float64) + a * z.detach().mT @ z.detach())
    )
    for route in (bl.logdet_dside, bl.cholesky_dside, bl.cholesky_small, bl.eigvalsh_small, bl.bare_small):
        (grad,) = torch.autograd.grad(route(z, eps), z)
        torch.testing.assert_close(grad, expected, rtol=RTOL, atol=ATOL, msg=route.__name__)


def test_view_loop_and_batched_routes_agree() -> None:
    z = _features(7, 19, seed=2, views=4)
    per_view = _dside_reference(z, 0.5)
    torch.testing.assert_close(
        bl.loop_over_views(bl.logdet_dside, z, 0.5), per_view.sum(), rtol=RTOL, atol=ATOL
    )
    torch.testing.assert_close(bl.cholesky_small(z, 0.5), per_view, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(bl.bare_small(z, 0.5), per_view, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(bl.reference_rate(z, 0.5), per_view, rtol=RTOL, atol=ATOL)


def test_grouped_loop_is_the_mcr2_rate_reduction() -> None:
    n, d, eps = 30, 8, 0.5
    z = _features(n, d, seed=3)
    labels = torch.tensor([0] * 12 + [1] * 10 + [3] * 8)  # class 2 is empty and must contribute nothing
    compress = sum(int((labels == j).sum()) / n * _dside_reference(z[labels == j], eps) for j in (0, 1, 3))
    expected = _dside_reference(z, eps) - compress
    for route in (bl.logdet_dside, bl.cholesky_small):
        torch.testing.assert_close(bl.grouped_loop(route, z, labels, 4, eps), expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(bl.grouped_mcr2_dense(z, labels, 4, eps), expected, rtol=1e-7, atol=1e-7)


def test_harness_formatting() -> None:
    assert harness.format_time(1.5e-3) == "1.5 ms"
    assert harness.format_time(2.0) == "2 s"
    assert harness.format_time(3e-7) == "300 ns"
    assert harness.format_time(None) == "—"
    assert harness.format_ratio(12.345) == "12.3x"
    assert harness.format_ratio(812.4) == "812x"
    assert harness.finite_or_none(float("nan")) is None
    table = harness.markdown_table(["a", "b"], [["x|y", "1"]])
    assert table.splitlines() == ["| a | b |", "| :--- | ---: |", "| x\\|y | 1 |"]


def test_targets_pass_fail_and_missing() -> None:
    grid = [w for w in cr_bench.FULL_GRID if w.name in ("128x640", "emp-ssl")]
    rows: list[dict[str, Any]] = [
        {"workload": "128x640", "route": "ours", "speedup": 1.0, "status": "ok", "rel_err": 1e-7},
        {"workload": "128x640", "route": "logdet_d", "speedup": 25.0},
        {"workload": "128x640", "route": "cholesky_small", "speedup": 0.9},
        {"workload": "emp-ssl", "route": "ours", "speedup": 1.0, "status": "ok", "rel_err": 1e-7},
        {"workload": "emp-ssl", "route": "logdet_d", "speedup": None},
        {"workload": "emp-ssl", "route": "cholesky_small_batched", "speedup": 1.0},
    ]

    def statuses(tol: float) -> dict[tuple[str, str], str]:
        return {(t["workload"], t["baseline"]): t["status"] for t in cr_bench._targets(grid, rows, tol)}

    status = statuses(1e-3)
    assert status[("128x640", "logdet_d")] == "PASS"
    assert status[("128x640", "cholesky_small")] == "FAIL"
    assert status[("emp-ssl", "logdet_d")] == "FAIL (not measured)"
    assert status[("emp-ssl", "cholesky_small_batched")] == "PASS"
    assert status[("100x1024", "logdet_d")] == "n/a (not in grid)"
    # Fast but inaccurate is a failure.
    assert statuses(1e-8)[("128x640", "logdet_d")].startswith("FAIL (ours: ok, rel. error 1e-07")
    rows[0]["status"] = "nonfinite"
    assert statuses(1e-3)[("128x640", "logdet_d")].startswith("FAIL (ours: nonfinite")


def _check_timing(timing: dict[str, Any]) -> None:
    assert timing["median"] > 0 and timing["iqr"] >= 0
    assert timing["p25"] <= timing["median"] <= timing["p75"]
    assert timing["runs"] >= 1 and timing["number_per_run"] >= 1


def test_coding_rate_quick_writes_consistent_reports(tmp_path: Path) -> None:
    assert cr_bench.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "coding_rate_cpu_float32_quick.json").read_text())
    markdown = (tmp_path / "coding_rate_cpu_float32_quick.md").read_text()
    env = payload["environment"]
    assert (env["torch"], env["device"], env["dtype"], env["threads"]) == (
        torch.__version__,
        "cpu",
        "float32",
        1,
    )
    assert env["device_name"]

    results = payload["results"]
    expected = {(w.name, key) for w in cr_bench.QUICK_GRID for key in cr_bench._routes(w, 0.5)}
    assert {(r["workload"], r["route"]) for r in results} == expected
    ours = {r["workload"]: r for r in results if r["route"] in ("ours", "ours_grouped")}
    for r in results:
        assert r["status"] == "ok", r
        _check_timing(r["timing"])
        # fp32 on unit-norm rows: every route, ours included, must agree with float64 to ~1e-6.
        assert r["rel_err"] < 1e-4, r
        ratio = r["timing"]["median"] / ours[r["workload"]]["timing"]["median"]
        assert r["speedup"] == pytest.approx(ratio)
        assert r["title"] in markdown

    targets = payload["targets"]
    full_grid_only = [t for t in targets if t["workload"] not in {w.name for w in cr_bench.QUICK_GRID}]
    assert len(full_grid_only) == len(cr_bench.TARGETS)
    assert all(t["status"] == "n/a (not in grid)" for t in full_grid_only)
    never_slower = [t for t in targets if t not in full_grid_only]
    assert {t["baseline"] for t in never_slower} == set(cr_bench.NEVER_SLOWER)
    for t in never_slower:
        assert t["status"] == ("PASS" if t["measured"] >= 1.0 else "FAIL")
    assert "## Targets" in markdown and "## Results" in markdown
    assert markdown.count("| n/a (not in grid) |") == len(full_grid_only)
    assert harness.format_time(ours["16x48"]["timing"]["median"]) in markdown


def test_coding_rate_quick_bfloat16_autocast(tmp_path: Path) -> None:
    argv = ["--quick", "--dtype", "bfloat16", "--only", "16x48,grouped-quick", "--out-dir", str(tmp_path)]
    assert cr_bench.main(argv) == 0
    payload = json.loads((tmp_path / "coding_rate_cpu_bfloat16_quick.json").read_text())
    assert payload["environment"]["dtype"] == "bfloat16"
    assert {r["workload"] for r in payload["results"]} == {"16x48", "grouped-quick"}
    for r in payload["results"]:
        # A baseline may fail outright on a bf16-rounded Gram; that is reported, not timed.
        if r["status"] == "error":
            assert r["timing"] is None and r["error"]
        else:
            _check_timing(r["timing"])
        if r["route"] in ("ours", "ours_grouped", "ours_loop", "bare_small"):
            # The reference is of the bf16-rounded inputs, so only the fp32 island's rounding remains. The
            # bare route keeps the island too: it leaves out the checks, not the precision.
            assert r["status"] == "ok", r
            assert r["rel_err"] < 1e-4, r


def _usage_error(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Runs ``main(argv)``, expects an argparse usage error (exit status 2) and returns its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    return err


def test_coding_rate_rejects_unknown_workload_and_missing_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--quick", "--out-dir", str(tmp_path)]
    assert "'nope'" in _usage_error(cr_bench.main, [*out, "--only", "nope"], capsys)
    # A known name next to an unknown one must not hide it.
    assert "'nope'" in _usage_error(cr_bench.main, [*out, "--only", "16x48,nope"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda" in _usage_error(cr_bench.main, [*out, "--device", "cuda"], capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("coding_rate", ["--threads", "0"], "--threads: must be >= 1, got '0'"),
        ("coding_rate", ["--threads", "two"], "--threads: expected an integer >= 1, got 'two'"),
        ("coding_rate", ["--eps", "0"], "--eps: must be finite and > 0, got '0'"),
        ("coding_rate", ["--eps", "nan"], "--eps: must be finite and > 0, got 'nan'"),
        ("coding_rate", ["--min-run-time", "-1"], "--min-run-time: must be finite and >= 0"),
        ("logdet", ["--batch", "0"], "--batch: must be >= 1, got '0'"),
        ("logdet", ["--sizes", "0"], "--sizes: must be >= 1, got '0'"),
        ("logdet", ["--sizes", "8,abc"], "got 'abc' in '8,abc'"),
        ("logdet", ["--sizes", ","], "--sizes: expected an integer >= 1, got ''"),
        ("logdet", ["--min-run-time", "-0.5"], "--min-run-time: must be finite and >= 0"),
        ("train_step", ["--batch-size", "0"], "--batch-size: must be >= 1, got '0'"),
        ("train_step", ["--views", "1"], "--views: a sequence needs an observation and a target view, got 1"),
        ("train_step", ["--model", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    script: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = {"coding_rate": cr_bench.main, "logdet": ld_bench.main, "train_step": ts_bench.main}[script]
    assert message in _usage_error(main, ["--quick", "--out-dir", str(tmp_path), *argv], capsys)
    assert not list(tmp_path.iterdir())


def test_timer_defaults_are_filled_in_and_an_explicit_zero_is_kept() -> None:
    parser = harness.make_parser("", dtypes=("float32",))
    args = harness.parse_args(parser, ["--quick", "--min-run-time", "0"], min_run_time=(0.02, 0.5))
    assert (args.timer, args.min_run_time) == ("blocked", 0.0)
    args = harness.parse_args(parser, [], min_run_time=(0.02, 0.5))
    assert (args.timer, args.min_run_time, torch.get_num_threads()) == ("adaptive", 0.5, 1)


def test_logdet_quick_writes_consistent_reports(tmp_path: Path) -> None:
    argv = ["--quick", "--sizes", "8,24", "--batch", "3", "--name", "ld", "--out-dir", str(tmp_path)]
    assert ld_bench.main(argv) == 0
    payload = json.loads((tmp_path / "ld.json").read_text())
    markdown = (tmp_path / "ld.md").read_text()
    rows = payload["results"]
    assert {(r["dtype"], r["size"], r["route"]) for r in rows} == {
        (dt, k, key) for dt in ("float32", "float64") for k in (8, 24) for key in ld_bench.ROUTES
    }
    for r in rows:
        _check_timing(r["timing"])
        assert r["batch"] == 3
        assert r["rel_err"] < (1e-5 if r["dtype"] == "float32" else 1e-12), r
        if r["route"] == "logdet":
            assert r["speedup_vs_logdet"] == 1.0
    for heading in ("## float32: time", "## float64: time", "## float32: relative error"):
        assert heading in markdown
    assert payload["config"]["sizes"] == [8, 24]


def test_train_step_quick_times_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quick", "--batch-size", "8", "--threads", "1", "--out-dir", str(tmp_path)]
    assert ts_bench.main(argv) == 0
    payload = json.loads((tmp_path / "train_step_cpu_quick.json").read_text())
    assert (payload["config"]["timer"], payload["config"]["min_run_time"]) == ("blocked", 0.2)
    rows = payload["results"]["variants"]
    assert sorted(rows) == sorted(ts_bench.VARIANTS)
    d_model = 128 + 32  # the demo ConvEncoder's features and action embeddings
    for name, row in rows.items():
        _check_timing(row["step"])
        assert 0 < row["rate_share"] < 1, name
        assert row["rate_shape"] == [16 if name == "symmetric_rate" else 8, d_model]
        assert row["rate_in_loss"] == name.endswith("_rate")
    markdown = (tmp_path / "train_step_cpu_quick.md").read_text()
    assert markdown.startswith("# One seq-JEPA training step per variant (cpu, model `demo`)")
    assert markdown.count("\n| ") == 2 + len(rows)
    with pytest.raises(SystemExit):
        ts_bench.main(["--help"])
    assert "default: every available CPU" in " ".join(capsys.readouterr().out.split())


def _tensors(out: object) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]


def test_cuda_sync_check_cases_run_on_cpu_along_the_cuda_route(monkeypatch: pytest.MonkeyPatch) -> None:
    # The synchronization check itself needs CUDA. Its workloads run here twice: as on CPU, and along the
    # route CUDA takes (no padding, every rare branch selected on the device, the inverse from a triangular
    # solve), which must give the same results up to float32 rounding of the two inverse routes. The CPU
    # route's float64 redo (a host-only step, which would rescue the failed-factorization case) is off.
    with pytest.MonkeyPatch.context() as no_redo:
        no_redo.setattr(_host, "check_float32", lambda *args: _host.Float32Check(False, None))
        on_cpu = {name: _tensors(case()) for name, case in sync_check.cases(torch.device("cpu")).items()}
    inverse = gram_logdet._spd_inverse
    monkeypatch.setattr(_gram, "padded_size", lambda k, device: k)
    monkeypatch.setattr(_host, "decided_on_host", lambda x: False)
    monkeypatch.setattr(gram_logdet, "_spd_inverse", lambda chol, potri=None: inverse(chol, potri=False))
    for name, case in sync_check.cases(torch.device("cpu")).items():
        expected, got = on_cpu[name], _tensors(case())
        assert expected and len(got) == len(expected), name
        # The bf16 case's gradient leaves through a bf16 matmul, which rounds it to 2^-8 relative: a float32
        # difference between the two inverse routes can move a value by one bf16 step there.
        rtol = 1e-2 if "bf16" in name else 1e-4
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
