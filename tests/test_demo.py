"""The demo workflow end to end at a tiny grid: every backend, identical outputs, JSON and PNG."""

from __future__ import annotations

import json

import pytest

from e2fastio.__main__ import main
from e2fastio.demo.model import AdvectionDiffusionModel, grid, initial_state
from e2fastio.demo.workflow import DemoError, backend_cases, run_demo


def test_demo_end_to_end_tiny_grid(tmp_path, capsys):
    rc = main(["demo", "--grid", "10", "--members", "3", "--steps", "9", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is True
    assert set(record["results"]) == set(backend_cases())
    for name, r in record["results"].items():
        assert r["seconds"] > 0 and r["bytes"] > 0, name
    assert record["results"]["zarr-blosc"]["ratio"] > 1.5  # realistic, compressible data
    assert record["results"]["zarr"]["speedup"] is not None
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "outputs identical across backends: yes" in out and "e2fastio Zarr zstd" in out


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
        (["--backends", "zarr,nope"], "unknown backend"),
        (["--grid", "0.7"], "--grid"),
        (["--members", "0"], "--members"),
        (["--device", "cuda:0"], "CUDA"),
    ],
)
def test_demo_bad_options_clear_errors(tmp_path, capsys, argv, message):
    import torch

    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    rc = main(["demo", "--out", str(tmp_path), "--no-progress", "--no-plot", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_demo_negative_step_seconds_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--model-step-seconds", "-1"])
    assert "must be >= 0" in capsys.readouterr().err


def test_run_demo_raises_on_disagreement(tmp_path, monkeypatch):
    """The identity check fails loudly when a backend stores different numbers."""
    from e2fastio.demo import workflow

    real = workflow._read_back

    def corrupt(path, io):
        out = real(path, io)
        if path is not None and "python-zarr" in str(path):
            out["t2m"] = out["t2m"].copy()
            out["t2m"].flat[0] += 1
        return out

    monkeypatch.setattr(workflow, "_read_back", corrupt)
    with pytest.raises(DemoError, match="python-zarr:t2m"):
        run_demo(members=2, steps=2, resolution=10, backends=["zarr", "python-zarr"], out=tmp_path,
                 progress=False, plot=False)


def test_demo_writes_to_s3_when_asked(tmp_path, s3_bucket, monkeypatch, capsys):
    import s3_support as S

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S.SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", S.REGION)
    rc = main(["demo", "--grid", "10", "--members", "2", "--steps", "4", "--out", str(tmp_path), "--no-progress",
               "--no-plot", "--backends", "zarr-blosc,zarr-blosc-s3,python-zarr-blosc-s3",
               "--s3", f"s3://{bucket}/demo", "--s3-endpoint", endpoint])
    assert rc == 0
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["identical"] is True
    s3 = record["results"]["zarr-blosc-s3"]
    assert s3["bytes"] > 0 and s3["speedup"] is not None
    assert S.list_keys(endpoint, bucket, "demo/") == {}  # cleaned up (no --keep)
    assert "e2fastio Zarr zstd S3" in capsys.readouterr().out


def test_demo_without_matplotlib_says_what_to_install_and_still_reports(tmp_path):
    """`pip install e2fastio` has no plotting library: the demo must not end in a traceback."""
    import subprocess
    import sys
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
