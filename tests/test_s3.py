"""Object stores: every backend and store form against a real S3 server (moto, own process).

Data is read back with zarr-python and xarray through both s3fs and obstore.
Faults come from a loopback proxy that answers 503, drops connections, or is
stopped altogether.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import s3_support as S
import xarray as xr
import zarr
import zarr.storage

from e2fastio import AsyncZarrBackend, BackgroundWriteError, UploadError, ZarrBackend
from e2fastio.stores.remote import Redactor, RemoteOptions

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _coords(members: int = 3, steps: int = 4) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        ensemble=np.arange(members),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, 19),
        lon=np.linspace(0, 360, 36, endpoint=False),
    )


def _data(c: OrderedDict[str, np.ndarray], seed: int) -> np.ndarray:
    shape = tuple(len(v) for v in c.values())
    return np.random.default_rng(seed).normal(280, 10, shape).astype(np.float32)


def _write_steps(io, c, names, truth) -> None:
    """The forecast loop: one write per lead time."""
    for k in range(len(c["lead_time"])):
        step = OrderedDict(c)
        step["lead_time"] = c["lead_time"][k : k + 1]
        io.write([truth[n][:, :, k : k + 1].copy() for n in names], step, names)


def _read_both_ways(endpoint: str, bucket: str, prefix: str) -> list[xr.Dataset]:
    """The store as xarray sees it through s3fs and through obstore."""
    fs = S.s3fs_filesystem(endpoint, asynchronous=True)
    via_s3fs = xr.open_zarr(zarr.storage.FsspecStore(fs, path=f"{bucket}/{prefix}", read_only=True),
                            consolidated=False)
    obs = zarr.storage.ObjectStore(S.obstore_store(endpoint, bucket, prefix), read_only=True)
    via_obstore = xr.open_zarr(obs, consolidated=False)
    return [via_s3fs.load(), via_obstore.load()]


def _check(endpoint, bucket, prefix, c, truth) -> None:
    for ds in _read_both_ways(endpoint, bucket, prefix):
        for name, want in truth.items():
            np.testing.assert_array_equal(ds[name].values, want)
        np.testing.assert_array_equal(ds["lat"].values, c["lat"])
        assert ds["lead_time"].dtype.kind == "m"


STORE_FORMS = ["url", "obstore", "zarr-objectstore", "zarr-fsspecstore"]


def _location(form: str, endpoint: str, bucket: str, prefix: str):
    if form == "url":
        return f"s3://{bucket}/{prefix}", S.store_kwargs(endpoint)
    if form == "obstore":
        return S.obstore_store(endpoint, bucket, prefix), None
    if form == "zarr-objectstore":
        return zarr.storage.ObjectStore(S.obstore_store(endpoint, bucket, prefix)), None
    fs = S.s3fs_filesystem(endpoint, asynchronous=True)
    return zarr.storage.FsspecStore(fs, path=f"{bucket}/{prefix}"), None


@pytest.mark.parametrize("form", STORE_FORMS)
@pytest.mark.parametrize("blocking", [True, False])
def test_zarr_backend_writes_to_s3_in_every_store_form(s3_bucket, form, blocking):
    endpoint, bucket = s3_bucket
    c = _coords()
    truth = {"t2m": _data(c, 1), "tcwv": _data(c, 2)}
    loc, skw = _location(form, endpoint, bucket, f"zb-{form}.zarr")
    with ZarrBackend(loc, chunks={"ensemble": 1, "time": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=blocking, store_kwargs=skw) as io:
        io.add_array(c, list(truth))
        _write_steps(io, c, list(truth), truth)
    st = io.stats()["uploads"]
    assert st["objects_uploaded"] == 2 * 3 * 4 and st["objects_failed"] == 0
    _check(endpoint, bucket, f"zb-{form}.zarr", c, truth)


@pytest.mark.parametrize("form", ["url", "obstore", "fs_factory"])
def test_async_backend_writes_to_s3(s3_bucket, form):
    endpoint, bucket = s3_bucket
    c = _coords()
    truth = {"t2m": _data(c, 3)}
    kw: dict = {}
    if form == "url":
        kw = {"store": f"s3://{bucket}/ab.zarr", "store_kwargs": S.store_kwargs(endpoint)}
    elif form == "obstore":
        kw = {"store": S.obstore_store(endpoint, bucket, "ab.zarr")}
    else:
        kw = {"fs_factory": S.fs_factory(endpoint)}
    ctx = pytest.warns(FutureWarning, match="fs_factory") if form == "fs_factory" else warnings.catch_warnings()
    with ctx:
        io = AsyncZarrBackend(f"{bucket}/ab.zarr" if form == "fs_factory" else None,
                              parallel_coords={"lead_time": c["lead_time"]}, blocking=False, pool_size=4,
                              zarr_codecs=BLOSC, **kw)
    io.add_array(c, "t2m")
    _write_steps(io, c, ["t2m"], truth)
    io.close()
    _check(endpoint, bucket, "ab.zarr", c, truth)


def test_in_memory_stores_work_for_both_backends():
    c = _coords()
    truth = {"t2m": _data(c, 4)}
    plain = zarr.storage.MemoryStore()  # a zarr store we do not own: chunks go through its API
    for io in (ZarrBackend(None, blocking=False), ZarrBackend(plain),
               AsyncZarrBackend(None, parallel_coords={"lead_time": c["lead_time"]}, store="memory://")):
        with io:
            io.add_array(c, "t2m")
            _write_steps(io, c, ["t2m"], truth)
            np.testing.assert_array_equal(io["t2m"][:], truth["t2m"])
    np.testing.assert_array_equal(zarr.open_group(plain, mode="r")["t2m"][:], truth["t2m"])


def test_partial_chunk_writes_merge_with_what_s3_holds(s3_bucket):
    """A write covering part of a chunk reads the stored chunk back (or the one still uploading)."""
    endpoint, bucket = s3_bucket
    c = _coords(members=2, steps=2)
    want = _data(c, 5)
    for blocking in (True, False):
        prefix = f"merge-{blocking}.zarr"
        with ZarrBackend(f"s3://{bucket}/{prefix}", chunks={"lead_time": 1}, zarr_codecs=BLOSC, blocking=blocking,
                         store_kwargs=S.store_kwargs(endpoint)) as io:
            io.add_array(c, "t2m")
            for lo, hi in ((0, 10), (10, 36), (5, 20)):  # overlapping pieces of every chunk
                part = OrderedDict(c)
                part["lon"] = c["lon"][lo:hi]
                io.write(want[..., lo:hi], part, "t2m")
        assert io.stats()["chunks_merged"] > 0
        _check(endpoint, bucket, prefix, c, {"t2m": want})


@pytest.mark.parametrize("backend", ["ZarrBackend", "AsyncZarrBackend"])
def test_metadata_requests_are_few_and_writes_send_only_chunks(s3_bucket, fault_proxy, backend):
    """Each request to an object store is a round trip: opening a new store and
    creating 5 coordinates and 2 arrays takes a bounded number of requests (no
    Zarr v2 probing of an empty location, no parent-group rewrites, no repeated
    membership lookups), and the forecast loop sends chunk PUTs and nothing else."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()  # relays only; its events list every request
    c = _coords(members=2, steps=3)
    truth = {"t2m": _data(c, 21), "tcwv": _data(c, 22)}
    kw = dict(zarr_codecs=BLOSC, blocking=False)
    loc = f"s3://{bucket}/few-{backend}.zarr"
    if backend == "ZarrBackend":
        io = ZarrBackend(loc, chunks={"time": 1, "lead_time": 1}, store_kwargs=S.store_kwargs(proxy.endpoint), **kw)
    else:
        io = AsyncZarrBackend(None, parallel_coords={"lead_time": c["lead_time"]}, store=loc,
                              store_kwargs=S.store_kwargs(proxy.endpoint), **kw)
    opened = list(proxy.events)
    assert len(opened) <= 3, opened  # list the prefix, check zarr.json, put zarr.json
    io.add_array(c, list(truth))
    created = list(proxy.events)[len(opened):]
    # per new array: an existence check and a PUT of its zarr.json; coordinate chunks; the root read twice
    assert len(created) <= 2 * 7 + 5 + 2, created
    assert not [e for e in created if e[0] == "PUT" and e[1].rstrip("/").endswith(f"few-{backend}.zarr/zarr.json")]
    io.flush()
    before = len(proxy.events)
    _write_steps(io, c, list(truth), truth)
    io.close()
    sent = list(proxy.events)[before:]
    assert sent and all(m == "PUT" and "/c/" in path for m, path, _ in sent), sent
    assert len(sent) == 2 * 3  # one per chunk: 2 arrays x 3 lead times
    _check(endpoint, bucket, f"few-{backend}.zarr", c, truth)


def test_throttling_and_dropped_connections_are_retried(s3_bucket, fault_proxy):
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(fail_503=0.25, drop=0.1, delay=0.1, delay_seconds=0.2, seed=7)
    c = _coords(members=4, steps=6)
    truth = {"t2m": _data(c, 6), "tcwv": _data(c, 7)}
    with ZarrBackend(f"s3://{bucket}/faults.zarr", chunks={"ensemble": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=False, store_kwargs=S.store_kwargs(proxy.endpoint), upload_retries=8,
                     upload_timeout=10) as io:
        io.add_array(c, list(truth))
        _write_steps(io, c, list(truth), truth)
        io.flush()
        st = io.stats()["uploads"]
    assert proxy.stats["fail_503"] > 0 and proxy.stats["dropped"] > 0, proxy.stats
    assert st["objects_failed"] == 0 and st["objects_uploaded"] == 2 * 4 * 6
    _check(endpoint, bucket, "faults.zarr", c, truth)  # read straight from the server


@pytest.mark.parametrize("blocking", [True, False])
def test_stopped_server_gives_a_clear_error_in_time_and_keeps_earlier_data(s3_bucket, fault_proxy, blocking):
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()
    c = _coords(members=2, steps=3)
    want = _data(c, 8)
    prefix = f"down-{blocking}.zarr"
    io = ZarrBackend(f"s3://{bucket}/{prefix}", chunks={"ensemble": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=blocking, store_kwargs=S.store_kwargs(proxy.endpoint), upload_retries=2,
                     upload_timeout=2)
    io.add_array(c, "t2m")
    first = OrderedDict(c)
    first["lead_time"] = c["lead_time"][:1]
    io.write(want[:, :, :1], first, "t2m")
    io.flush()
    proxy.stop_listening()  # the server is gone
    later = OrderedDict(c)
    later["lead_time"] = c["lead_time"][1:]
    t0 = time.monotonic()
    with pytest.raises((UploadError, BackgroundWriteError)) as info:
        io.write(want[:, :, 1:], later, "t2m")
        io.close()
    elapsed = time.monotonic() - t0
    err = info.value if isinstance(info.value, UploadError) else info.value.__cause__
    assert isinstance(err, UploadError) and len(err.failures) == 2 * 2
    assert all(key.startswith("t2m/c/") for key, _ in err.failures)
    assert "failed after 3 attempt(s)" in str(err)
    assert S.SECRET_KEY not in str(info.value) and S.SECRET_KEY not in repr(err.failures)
    assert elapsed < 30, elapsed
    io.close()  # idempotent; nothing left running
    got = zarr.open_group(zarr.storage.ObjectStore(S.obstore_store(endpoint, bucket, prefix)), mode="r")["t2m"]
    np.testing.assert_array_equal(got[:, :, :1], want[:, :, :1])  # written before: intact


def test_bad_remote_options_name_the_argument(s3_bucket):
    endpoint, bucket = s3_bucket
    for kw, match in (({"upload_concurrency": 0}, "concurrency"), ({"upload_retries": -1}, "retries"),
                      ({"upload_timeout": 0}, "timeout")):
        with pytest.raises(ValueError, match=match):
            ZarrBackend(f"s3://{bucket}/x.zarr", store_kwargs=S.store_kwargs(endpoint), **kw)
    with pytest.raises(ValueError, match="store_kwargs"):
        ZarrBackend("local-dir.zarr", store_kwargs={"region": "x"})
    with pytest.raises(TypeError, match="file_name"):
        ZarrBackend(12345)
    with pytest.raises(TypeError, match="store_kwargs must be a dict"):
        ZarrBackend(f"s3://{bucket}/x.zarr", store_kwargs=[("region", "x")])
    with pytest.raises(ValueError, match="read-only"):
        ZarrBackend(zarr.storage.MemoryStore(read_only=True))


def test_missing_bucket_fails_fast_without_leaking_credentials(s3_bucket):
    endpoint, _ = s3_bucket
    secret = "definitely-not-the-secret-123"
    kw = S.store_kwargs(endpoint, secret_access_key=secret)
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        with ZarrBackend("s3://no-such-bucket-e2f/x.zarr", store_kwargs=kw, upload_retries=1) as io:
            io.add_array(_coords(), "t2m")
    assert time.monotonic() - t0 < 30
    assert "no-such-bucket-e2f" in str(info.value) and secret not in str(info.value)


def test_redactor_removes_secrets_and_signatures():
    r = Redactor(["s3cr3t-value"])
    msg = ("PUT http://u:pw@host/b?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA/x failed with s3cr3t-value; "
           "Authorization: AWS4-HMAC-SHA256 Credential=AKIA, Signature=0123abcd")
    out = r(msg)
    for secret in ("s3cr3t-value", "abcdef", "AKIA/x", "AWS4-HMAC", "pw@", "0123abcd"):
        assert secret not in out, out
    with pytest.raises(ValueError, match="queue_bytes"):
        RemoteOptions(queue_bytes=0)


def test_forked_child_gets_a_clear_error_and_the_parent_keeps_working(s3_bucket):
    import os

    endpoint, bucket = s3_bucket
    c = _coords(members=1, steps=2)
    want = _data(c, 9)
    io = ZarrBackend(f"s3://{bucket}/fork.zarr", chunks={"lead_time": 1}, store_kwargs=S.store_kwargs(endpoint))
    io.add_array(c, "t2m")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            io.write(want, c, "t2m")
        except RuntimeError as err:
            code = 0 if "forked child" in str(err) else 2
        io.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    io.write(want, c, "t2m")
    io.close()
    _check(endpoint, bucket, "fork.zarr", c, {"t2m": want})


def test_our_retries_cover_a_store_that_does_not_retry_itself(s3_bucket, fault_proxy):
    """An obstore store configured with no retries of its own: the Uploader's backoff makes every chunk land."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(fail_503=0.3, drop=0.1, seed=11)
    c = _coords(members=3, steps=4)
    want = _data(c, 10)
    store = S.obstore_store(proxy.endpoint, bucket, "noretry.zarr", retry_config={"max_retries": 0})
    # Metadata goes straight to the server (zarr-python does not retry); chunks go through the proxy.
    setup = ZarrBackend(S.obstore_store(endpoint, bucket, "noretry.zarr"), chunks={"ensemble": 1, "lead_time": 1})
    setup.add_array(c, "t2m")
    setup.close()
    with ZarrBackend(store, upload_retries=10, upload_timeout=10) as io:
        _write_steps(io, c, ["t2m"], {"t2m": want})
    st = io.stats()["uploads"]
    assert proxy.stats["fail_503"] + proxy.stats["dropped"] > 0
    assert st["retries"] > 0 and st["objects_failed"] == 0 and st["objects_uploaded"] == 3 * 4
    _check(endpoint, bucket, "noretry.zarr", c, {"t2m": want})


# ----------------------------------------------------------------------------- one retry policy
# The proxy's script fails the first requests for every chunk object in a set
# way, so the number of PUTs the server is sent for each chunk is known exactly.

def _chunk_puts(proxy, array: str = "t2m") -> dict[str, int]:
    """PUT requests per chunk object that reached the proxy (answered, failed or dropped)."""
    out: dict[str, int] = {}
    for method, path, _ in proxy.events:
        if method == "PUT" and f"/{array}/c/" in path:
            key = path.split("?", 1)[0]
            out[key] = out.get(key, 0) + 1
    return out


def _scripted_backend(proxy, bucket: str, prefix: str, c, *, form: str = "url", client_options=None,
                      **kw) -> ZarrBackend:
    """A blocking backend through `proxy` whose arrays exist before any fault is scripted."""
    if form == "url":
        io = ZarrBackend(f"s3://{bucket}/{prefix}", chunks={"ensemble": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                         store_kwargs=S.store_kwargs(proxy.endpoint, client_options=client_options or {}), **kw)
    else:  # a zarr FsspecStore over s3fs as the user configured it (s3fs and botocore defaults)
        fs = S.s3fs_filesystem(proxy.endpoint, asynchronous=True)
        io = ZarrBackend(zarr.storage.FsspecStore(fs, path=f"{bucket}/{prefix}"),
                         chunks={"ensemble": 1, "lead_time": 1}, zarr_codecs=BLOSC, **kw)
    io.add_array(c, "t2m")
    io.flush()
    return io


@pytest.mark.parametrize("fault", ["fail_503", "fail_500", "fail_429", "drop", "reset", "timeout"])
def test_each_transient_fault_costs_exactly_one_more_put(s3_bucket, fault_proxy, fault):
    """URL stores: obstore's own retries are off for chunk uploads, so N faults per
    chunk cost N + 1 PUTs (not (N + 1) x obstore's retries) and every retry is ours.
    The timeout case: the client's own request timeout (set shorter than
    upload_timeout) ends each stalled attempt, and no other layer retries it."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(delay_seconds=2.5)
    c = _coords(members=2, steps=2)
    want = _data(c, 31)
    faults = 2
    io = _scripted_backend(proxy, bucket, f"t-{fault}.zarr", c, upload_retries=faults, upload_timeout=20,
                           client_options={"timeout": "1s"} if fault == "timeout" else None)
    proxy.script = ("delay" if fault == "timeout" else fault,) * faults
    proxy.reset_stats()
    io.write(want, c, "t2m")
    st = io.stats()["uploads"]
    io.close()
    puts = _chunk_puts(proxy)
    assert len(puts) == 2 * 2 and set(puts.values()) == {faults + 1}, puts
    assert st["retries"] == faults * 4 and st["objects_failed"] == 0, st
    _check(endpoint, bucket, f"t-{fault}.zarr", c, {"t2m": want})


@pytest.mark.parametrize("retries", [0, 2])
def test_upload_retries_bounds_the_attempts_exactly(s3_bucket, fault_proxy, retries):
    """upload_retries=R: a chunk that keeps failing is sent R + 1 times, then
    reported as UploadError naming its key; R=0 is one attempt, no retry anywhere."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()
    c = _coords(members=2, steps=2)
    io = _scripted_backend(proxy, bucket, f"r{retries}.zarr", c, upload_retries=retries)
    proxy.script = ("fail_503",) * (retries + 1)
    proxy.reset_stats()
    with pytest.raises(UploadError) as info:
        io.write(_data(c, 32), c, "t2m")
    io.close()
    puts = _chunk_puts(proxy)
    assert len(puts) == 4 and set(puts.values()) == {retries + 1}, puts
    keys = sorted(k for k, _ in info.value.failures)
    assert keys == sorted(f"t2m/c/{e}/0/{t}/0/0" for e in range(2) for t in range(2))
    assert all(f"failed after {retries + 1} attempt(s)" in reason and "503" in reason
               for _, reason in info.value.failures), info.value.failures
    assert io.stats()["uploads"]["retries"] == 4 * retries


@pytest.mark.parametrize("form", ["url", "zarr-fsspecstore"])
def test_permanent_errors_are_sent_once(s3_bucket, fault_proxy, form):
    """Bad request, access denied and a missing bucket (scripted, then real) are
    not retried: one PUT per chunk, and UploadError names each key."""
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()
    c = _coords(members=2, steps=2)
    for n, fault in enumerate(("fail_400", "fail_403", "fail_404", "deleted bucket")):
        io = _scripted_backend(proxy, bucket, f"p{n}-{form}.zarr", c, upload_retries=3)
        if fault == "deleted bucket":
            S.delete_bucket(endpoint, bucket)  # really gone: the server answers NoSuchBucket
            proxy.script = None
        else:
            proxy.script = (fault,) * 5
        proxy.reset_stats()
        with pytest.raises(UploadError) as info:
            io.write(_data(c, 33), c, "t2m")
        io.close()
        puts = _chunk_puts(proxy)
        assert len(puts) == 4 and set(puts.values()) == {1}, (fault, puts)
        assert len(info.value.failures) == 4
        assert all("not retried" in reason for _, reason in info.value.failures), (fault, info.value.failures)
        assert io.stats()["uploads"]["retries"] == 0
        proxy.script = None


def test_errors_are_told_apart_by_type_and_status():
    """What s3fs raises for each S3 answer (builtin OSError subclasses caused by
    botocore's ClientError) and obstore's exception classes: 4xx but 408/429 and
    throttling codes are permanent, 5xx, timeouts and resets are not."""
    from botocore.exceptions import ClientError
    from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError
    from s3fs.errors import translate_boto_error

    from e2fastio.stores.uploads import _permanent

    def s3fs_error(status: int, code: str) -> BaseException:
        response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return translate_boto_error(ClientError(response, "PutObject"))

    permanent = [s3fs_error(400, "InvalidArgument"), s3fs_error(403, "AccessDenied"),
                 s3fs_error(403, "SignatureDoesNotMatch"), s3fs_error(404, "NoSuchBucket"),
                 s3fs_error(400, "MalformedXML"), s3fs_error(405, "MethodNotAllowed"),
                 PermissionDeniedError("denied"), UnauthenticatedError("who"), FileNotFoundError("bucket"),
                 GenericError("Error performing PUT x - Server returned non-2xx status code: 400 Bad Request: "),
                 ValueError("bad"), TypeError("bad")]
    transient = [s3fs_error(500, "InternalError"), s3fs_error(503, "SlowDown"), s3fs_error(429, "TooManyRequests"),
                 s3fs_error(408, "RequestTimeout"), s3fs_error(400, "RequestTimeout"),
                 s3fs_error(400, "Throttling"), s3fs_error(502, "BadGateway"),
                 GenericError("Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>"),
                 GenericError("Server returned non-2xx status code: 429 Too Many Requests"),
                 GenericError("HTTP error: error sending request"), TimeoutError(), ConnectionResetError(),
                 OSError("network is unreachable"), RuntimeError("anything else")]
    assert [e for e in permanent if not _permanent(e)] == []
    assert [e for e in transient if _permanent(e)] == []


def test_async_backend_uploads_are_not_bounded_by_pool_size(s3_bucket):
    """pool_size is Earth2Studio's count of writes in flight (each of its event loops has many uploads in
    flight); uploads in flight are bounded by upload_concurrency: 16 by default (as ZarrBackend), pool_size
    when that is more, or what is given. Each backend still writes and closes (its feeder thread woken)."""
    endpoint, bucket = s3_bucket
    c = _coords()
    truth = {"t2m": _data(c, 5)}
    for i, (kw, want) in enumerate((({}, 16), ({"pool_size": 32}, 32), ({"upload_concurrency": 3}, 3))):
        io = AsyncZarrBackend(None, parallel_coords={"lead_time": c["lead_time"]}, blocking=False,
                              store=f"s3://{bucket}/pool{i}.zarr", store_kwargs=S.store_kwargs(endpoint), **kw)
        io.add_array(c, "t2m")
        _write_steps(io, c, ["t2m"], truth)
        assert io.stats()["uploads"]["concurrency"] == want
        io.close()
        assert io.closed
        _check(endpoint, bucket, f"pool{i}.zarr", c, truth)
    with pytest.raises(ValueError, match="concurrency"):
        AsyncZarrBackend(None, parallel_coords={"lead_time": c["lead_time"]}, store=f"s3://{bucket}/bad.zarr",
                         store_kwargs=S.store_kwargs(endpoint), upload_concurrency=0)
