"""e2fastio backends as the `io=` of Earth2Studio's own workflows (needs `e2fastio[compare]`)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr

e2s = pytest.importorskip("earth2studio", reason="earth2studio is not installed (pip install e2fastio[compare])")

import earth2studio.io  # noqa: E402
from earth2studio.data import Random  # noqa: E402
from earth2studio.models.px import Persistence  # noqa: E402
from earth2studio.perturbation import Gaussian  # noqa: E402
from earth2studio.run import deterministic, ensemble  # noqa: E402

import e2fastio  # noqa: E402

DOMAIN = OrderedDict(lat=np.linspace(90, -90, 19), lon=np.linspace(0, 360, 36, endpoint=False))


def _model():
    return Persistence(["t2m", "tcwv"], DOMAIN)


def _structure(ds: xr.Dataset):
    return {k: (v.dims, v.shape, str(v.dtype)) for k, v in ds.variables.items()}


@pytest.mark.parametrize("blocking", [True, False])
def test_deterministic_run_with_e2fastio_zarr(tmp_path, blocking):
    io = e2fastio.ZarrBackend(str(tmp_path / "ours.zarr"), backend_kwargs={"overwrite": True}, blocking=blocking)
    out = deterministic(["2022-12-20"], 4, _model(), Random(DOMAIN), io, verbose=False)
    assert out is io
    io.close()
    ref = earth2studio.io.ZarrBackend(str(tmp_path / "ref.zarr"), backend_kwargs={"overwrite": True})
    deterministic(["2022-12-20"], 4, _model(), Random(DOMAIN), ref, verbose=False)
    ours = xr.open_zarr(tmp_path / "ours.zarr", consolidated=False)
    theirs = xr.open_zarr(tmp_path / "ref.zarr", consolidated=False)
    assert _structure(ours) == _structure(theirs)
    for c in ("time", "lead_time", "lat", "lon"):
        np.testing.assert_array_equal(ours[c].values, theirs[c].values)
    # Persistence: every lead time holds the initial state, exactly.
    t2m = ours["t2m"].values
    assert np.isfinite(t2m).all() and (t2m == t2m[:, :1]).all()


def test_ensemble_run_with_e2fastio_async_zarr(tmp_path):
    times = np.array(["2022-12-20"], dtype="datetime64[ns]")
    leads = (np.arange(4) * np.timedelta64(6, "h")).astype("timedelta64[ns]")
    io = e2fastio.AsyncZarrBackend(str(tmp_path / "ens.zarr"),
                                   parallel_coords={"ensemble": np.arange(4), "time": times, "lead_time": leads},
                                   blocking=False)
    ensemble(["2022-12-20"], 3, 4, _model(), Random(DOMAIN), io, Gaussian(), batch_size=2, verbose=False)
    io.close()
    ds = xr.open_zarr(tmp_path / "ens.zarr", consolidated=False)
    assert ds["t2m"].dims == ("ensemble", "time", "lead_time", "lat", "lon")
    assert ds["t2m"].shape == (4, 1, 4, 19, 36)
    v = ds["t2m"].values
    assert np.isfinite(v).all() and (v == v[:, :, :1]).all()
    assert not (v[0] == v[1]).all()  # perturbed members differ
