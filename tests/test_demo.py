"""The demo workflow end to end at a tiny grid: pairs, stand-ins, identical outputs, the model modes, JSON and PNG."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from e2fastio.__main__ import main
from e2fastio.demo.model import AdvectionDiffusionModel, GpuLikeModel, ensemble_start, grid, initial_state
from e2fastio.demo.s3 import local_server_unavailable
from e2fastio.demo.workflow import DemoError, case_names, run_demo

TINY = ["--grid", "10", "--members", "3", "--steps", "9", "--no-progress"]
HAS_E2S = importlib.util.find_spec("earth2studio") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
LOCAL_S3 = local_server_unavailable() is None


@pytest.mark.skipif(not HAS_E2S, reason="earth2studio is not installed (pip install 'e2fastio[compare]')")
def test_demo_pairs_every_seed_case_with_earth2studio(tmp_path, capsys):
    rc = main(["demo", *TINY, "--out", str(tmp_path)])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is True and record["mismatches"] == []
    assert record["counterparts"].startswith("Earth2Studio 0.19")
    expected = case_names() if LOCAL_S3 else [n for n in case_names() if n != "s3"]
    assert record["options"]["cases"] == expected
    assert record["compared"] == 2 * len(expected)
    for name in expected:
        ours, theirs = record["results"][name], record["results"][f"e2s-{name}"]
        assert ours["role"] == "e2fastio" and theirs["role"] == "earth2studio"
        assert ours["pair"] == f"e2s-{name}" and theirs["pair"] == name
        assert ours["speedup"] == pytest.approx(theirs["seconds"] / ours["seconds"])
        assert theirs["label"].startswith("Earth2Studio 0.19")
        for r in (ours, theirs):
            assert r["seconds"] >= r["closed_seconds"] > 0 and r["bytes"] > 0
            assert r["io_seconds"] == pytest.approx(max(r["seconds"] - r["model_seconds"], 0.0))
            assert r["peak_rss_bytes"] > 0
    assert record["results"]["zarr-blosc"]["ratio"] > 1.5  # realistic, compressible data
    assert record["results"]["netcdf"]["files"] == record["results"]["e2s-netcdf"]["files"] == 1
    assert record["results"]["zarr-memory"]["files"] == 0
    # Zarr v3: the group's zarr.json, 5 coordinates (zarr.json + one chunk each), 2 arrays' zarr.json and
    # one chunk per array and lead time.
    assert record["results"]["zarr"]["files"] == record["results"]["e2s-zarr"]["files"] == 1 + 5 * 2 + 2 + 2 * 10
    if LOCAL_S3:
        s3 = record["results"]["s3"]
        assert s3["steps"] == 4 and s3["files"] > 0 and record["s3"]["local_server"] is True
    if not torch.cuda.is_available():
        assert record["options"]["model"] == "gpu-like"
    out = capsys.readouterr().out
    assert f"outputs identical across all {2 * len(expected)} stores: yes" in out
    assert "durable s: add_array, every write and close(), then fsync" in out
    assert "e2fastio AsyncZarrBackend(blocking=False)" in out and "stand-in:" not in out
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob("*.nc"))  # removed without --keep
    if HAS_MPL:
        png = tmp_path / "demo.png"
        assert record["figure"] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_demo_without_earth2studio_uses_labelled_stand_ins(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "earth2studio.io", None)  # as if not installed: importing it fails
    cases = "zarr,netcdf,zarr-memory,async-nonblocking" + (",s3" if LOCAL_S3 else "")
    rc = main(["demo", *TINY, "--out", str(tmp_path), "--no-plot", "--backends", cases])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is True and record["counterparts"] == "stand-ins"
    for name in cases.split(","):
        theirs = record["results"][f"standin-{name}"]
        assert theirs["role"] == "stand-in" and theirs["label"].startswith("stand-in: ")
        assert record["results"][name]["pair"] == f"standin-{name}"
    assert not any(k.startswith("e2s-") for k in record["results"])
    out = capsys.readouterr().out
    assert "pure-Python stand-ins (earth2studio is not installed" in out
    assert "stand-in: netCDF4-python (E2S 0.19's writes)" in out


def test_model_choice_is_reported(tmp_path, capsys):
    rc = main(["demo", *TINY, "--out", str(tmp_path / "cpu"), "--no-plot", "--backends", "zarr-memory",
               "--model", "cpu"])
    assert rc == 0
    cpu = json.loads((tmp_path / "cpu" / "demo.json").read_text())
    assert cpu["options"]["model"] == "cpu" and cpu["model"].startswith("cpu: ")
    assert cpu["model_step_seconds"] is None
    rc = main(["demo", *TINY, "--out", str(tmp_path / "like"), "--no-plot", "--backends", "zarr-memory",
               "--model", "gpu-like", "--model-step-seconds", "0.05"])
    assert rc == 0
    like = json.loads((tmp_path / "like" / "demo.json").read_text())
    assert like["options"]["model"] == "gpu-like" and like["model_step_seconds"] == 0.05
    assert like["model_only_seconds"]["9"] >= 9 * 0.05  # the step time is spent, off the CPU
    assert like["results"]["zarr-memory"]["model_seconds"] == like["model_only_seconds"]["9"]
    out = capsys.readouterr().out
    assert "model: cpu: the demo model computes on the CPU" in out
    assert "model: gpu-like: the demo model's fields, precomputed; each step sleeps 0.050 s (declared)" in out


def test_gpu_like_model_hands_out_the_cpu_models_fields():
    lat, lon = grid(10)
    model = AdvectionDiffusionModel(lat, lon)
    start = ensemble_start(initial_state(lat, lon), 2, seed=1)
    like = GpuLikeModel(model, start, 4, keep=2, step_seconds=0.0)
    cpu = [x[:, :2] for _, x in zip(range(5), model.create_iterator(start), strict=False)]
    got = list(like.create_iterator())
    assert len(got) == 5 and all(torch.equal(a, b) for a, b in zip(got, cpu, strict=True))
    assert like.measured_step_seconds > 0


def test_model_is_deterministic_and_plausible():
    lat, lon = grid(5)
    m = AdvectionDiffusionModel(lat, lon)
    x0 = initial_state(lat, lon, seed=3)
    a = [s for _, s in zip(range(5), m.create_iterator(x0), strict=False)][-1]
    b = [s for _, s in zip(range(5), m.create_iterator(x0), strict=False)][-1]
    assert (a == b).all()
    t2m, tcwv = a[0], a[1]
    assert 200 < float(t2m.min()) and float(t2m.max()) < 320
    assert 0 <= float(tcwv.min()) and float(tcwv.max()) <= 70
    assert float(t2m[len(lat) // 2].mean()) > float(t2m[0].mean()) + 20  # warm tropics, cold poles


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backends", "zarr,nope"], "unknown case"),
        (["--grid", "0.7"], "--grid"),
        (["--members", "0"], "--members"),
        (["--device", "cuda:0"], "CUDA"),
        (["--model", "gpu"], "CUDA"),
        (["--device", "tpu"], "--device"),
        (["--lead-hours", "7"], "--lead-hours"),
    ],
)
def test_demo_bad_options_clear_errors(tmp_path, capsys, argv, message):
    if "CUDA" in message and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    rc = main(["demo", "--out", str(tmp_path), "--no-progress", "--no-plot", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model-step-seconds", "-1"], "must be >= 0"),
    (["--quick", "--full"], "not allowed with"),
    (["--full", "--grid", "1"], "--full is the 0.25 degree grid"),
    (["--s3", "s3://b/p", "--no-s3"], "contradict"),
])
def test_demo_bad_flags_rejected_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(["demo", *argv])
    assert message in capsys.readouterr().err


def test_run_demo_raises_on_disagreement(tmp_path, monkeypatch):
    """The identity check fails loudly, naming the store and field, when a backend stores different numbers."""
    from e2fastio.demo import workflow

    real = workflow._read_back

    def corrupt(member, ctx, io, plot_lead):
        rb = real(member, ctx, io, plot_lead)
        if member.role == "e2fastio":
            rb.digests["t2m"][2] = "0" * 32
        return rb

    monkeypatch.setattr(workflow, "_read_back", corrupt)
    with pytest.raises(DemoError, match="zarr-memory:t2m@12h"):
        run_demo(members=2, steps=3, resolution=10, backends=["zarr-memory"], out=tmp_path, progress=False,
                 plot=False)
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is False and record["mismatches"] == ["zarr-memory:t2m@12h"]


def test_demo_writes_to_a_given_s3_url(tmp_path, s3_bucket, monkeypatch, capsys):
    import s3_support as S

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", S.REGION)
    rc = main(["demo", "--grid", "10", "--members", "2", "--steps", "6", "--out", str(tmp_path), "--no-progress",
               "--no-plot", "--backends", "zarr-blosc,s3", "--s3", f"s3://{bucket}/demo", "--s3-endpoint", endpoint])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is True and record["s3"]["local_server"] is False
    s3 = record["results"]["s3"]
    assert s3["bytes"] > 0 and s3["files"] > 0 and s3["speedup"] is not None and s3["steps"] == 4
    assert S.list_keys(endpoint, bucket, "demo/") == {}  # cleaned up (no --keep)
    assert "e2fastio AsyncZarrBackend(store=s3://)" in capsys.readouterr().out


def test_demo_skips_s3_with_a_reason(tmp_path, capsys):
    rc = main(["demo", *TINY, "--out", str(tmp_path), "--no-plot", "--backends", "zarr-memory,s3", "--no-s3"])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["skipped"] == {"s3": "--no-s3"} and "s3" not in record["results"]
    assert "skipped: --no-s3" in capsys.readouterr().out


def test_stand_in_writes_slices_where_contiguous_and_fancy_indexes_otherwise(tmp_path):
    from e2fastio.baselines import StandInZarrBackend, selection

    stored = {"a": np.arange(5), "b": np.arange(4)}
    assert selection(stored, {"a": np.array([1, 2, 3]), "b": np.array([0])}) == (slice(1, 4), slice(0, 1))
    scattered = selection(stored, {"a": np.array([0, 2]), "b": np.array([3])})
    assert not any(isinstance(s, slice) for s in scattered)
    io = StandInZarrBackend(str(tmp_path / "s.zarr"), {"a": 1})
    io.add_array(OrderedDict(a=np.arange(5), b=np.arange(4)), "x")
    io.write(torch.ones(3, 4), OrderedDict(a=np.array([1, 2, 3]), b=np.arange(4)), "x")
    io.write(torch.full((2, 1), 7.0), OrderedDict(a=np.array([0, 4]), b=np.array([2])), "x")
    import zarr

    got = zarr.open_array(str(tmp_path / "s.zarr" / "x"), mode="r")[...]
    want = np.zeros((5, 4), np.float32)
    want[1:4] = 1
    want[[0, 4], 2] = 7
    assert np.array_equal(np.nan_to_num(got), want)


def test_demo_without_matplotlib_says_what_to_install_and_still_reports(tmp_path):
    """`pip install e2fastio` has no plotting library: the demo must not end in a traceback."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None  # as if it were not installed: importing it raises ImportError
        from e2fastio.__main__ import main
        sys.exit(main(["demo", "--grid", "10", "--members", "2", "--steps", "3", "--backends", "zarr",
                       "--out", {str(tmp_path)!r}, "--no-progress"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "pip install 'e2fastio[plot]'" in r.stdout
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["figure"] is None and record["identical"] is True
    assert not (tmp_path / "demo.png").exists()
