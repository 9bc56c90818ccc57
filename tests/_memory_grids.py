"""Coordinates and devices shared by the in-memory backends' tests (KVBackend, XarrayBackend)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

DEVICES = ["cpu", pytest.param("cuda:0", marks=pytest.mark.cuda)]
TIMES = [
    np.array(["2001-03-04"], dtype="datetime64[D]"),
    np.array(["1999-12-31T18:00", "2024-02-29T06:00"], dtype="datetime64[ns]"),
]


def grid(times, variables=("u10m", "v10m"), nlat=7, nlon=12):
    return OrderedDict(
        time=times,
        variable=np.array(variables),
        lat=np.linspace(-90, 90, nlat),
        lon=np.linspace(0, 360, nlon, endpoint=False),
    )


def shape(c):
    return tuple(len(v) for v in c.values())
