"""Real CUDA tests (marker `cuda`; skipped cleanly without a GPU)."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
import zarr

from e2fastio import ZarrBackend

pytestmark = pytest.mark.cuda


def test_nonblocking_write_of_cuda_tensors_is_async_and_exact(tmp_path):
    c = OrderedDict(ensemble=np.arange(8), lead_time=np.arange(6), lat=np.arange(721), lon=np.arange(1440))
    io = ZarrBackend(str(tmp_path / "g.zarr"), chunks={"lead_time": 1}, blocking=False,
                     zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    io.add_array(c, "t2m")
    assert io.stats()["ring"]["pinned"]
    x = torch.empty(8, 1, 721, 1440, device="cuda")  # 33 MB
    expect = []
    times = []
    for k in range(6):
        x.normal_(generator=torch.Generator(device="cuda").manual_seed(k))
        expect.append(x.cpu().numpy())
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        io.write(x, OrderedDict(c, lead_time=c["lead_time"][k : k + 1]), "t2m")
        times.append(time.perf_counter() - t0)
        x.fill_(-1.0)  # overwrite on the producer stream right away
    io.close()
    got = zarr.open_array(str(tmp_path / "g.zarr" / "t2m"))[...]
    for k in range(6):
        np.testing.assert_array_equal(got[:, k], expect[k][:, 0])
    assert min(times) < 0.005, times
