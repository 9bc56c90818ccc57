"""The loopback S3 test infrastructure works: moto server, clients, zarr over S3, fault proxy."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
import s3_support
from s3_support import SECRET_KEY, FaultProxy, MotoServer, list_keys

# Fast, bounded obstore retries for fault tests (obstore wants timedelta here, not "1s").
FAST_RETRY = {
    "max_retries": 10,
    "backoff": {"init_backoff": timedelta(milliseconds=10), "max_backoff": timedelta(milliseconds=200), "base": 2},
    "retry_timeout": timedelta(seconds=20),
}


def test_server_is_its_own_process(s3_server):
    assert s3_server.running and s3_server.pid != os.getpid()
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    client = s3_support.boto3_client(s3_server.endpoint)
    try:
        assert isinstance(client.list_buckets()["Buckets"], list)
    finally:
        client.close()


def test_server_start_failure_is_clear():
    pytest.importorskip("moto.server")
    with socket.socket() as taken:  # bound, not listening: the child's bind fails, probes are refused
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="could not bind"):
            MotoServer(port=port, timeout=20)


def test_server_latency_holds_each_request_and_overlaps_concurrent_ones():
    pytest.importorskip("moto.server")
    with pytest.raises(ValueError, match="latency"):
        MotoServer(latency=-1)
    server = MotoServer(latency=0.25)
    try:
        bucket = f"lat-{uuid.uuid4().hex[:8]}"
        s3_support.create_bucket(server.endpoint, bucket)
        client = s3_support.boto3_client(server.endpoint)
        try:
            t0 = time.perf_counter()
            client.put_object(Bucket=bucket, Key="one", Body=b"1")
            assert time.perf_counter() - t0 >= 0.25
            from concurrent.futures import ThreadPoolExecutor

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:  # eight at once wait side by side, not one after another
                list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"k{k}", Body=b"x"), range(8)))
            assert 0.25 <= time.perf_counter() - t0 < 8 * 0.25
        finally:
            client.close()
        assert list_keys(server.endpoint, bucket) == {"one": 1, **{f"k{k}": 1 for k in range(8)}}
    finally:
        server.stop()


def test_s3fs_roundtrip(s3_bucket):
    pytest.importorskip("s3fs")
    endpoint, bucket = s3_bucket
    fs = s3_support.s3fs_filesystem(endpoint)
    fs.pipe(f"{bucket}/a/b.bin", b"hello")
    with fs.open(f"{bucket}/a/c.bin", "wb") as f:
        f.write(b"x" * 100_000)
    assert fs.cat(f"{bucket}/a/b.bin") == b"hello"
    assert sorted(fs.ls(f"{bucket}/a")) == [f"{bucket}/a/b.bin", f"{bucket}/a/c.bin"]
    assert list_keys(endpoint, bucket) == {"a/b.bin": 5, "a/c.bin": 100_000}


def test_obstore_roundtrip_and_from_url(s3_bucket):
    obstore = pytest.importorskip("obstore")
    from obstore.store import from_url

    endpoint, bucket = s3_bucket
    store = s3_support.obstore_store(endpoint, bucket, "pre")
    obstore.put(store, "k", b"world")
    assert bytes(obstore.get(store, "k").bytes()) == b"world"

    url_store = from_url(f"s3://{bucket}/path.zarr", **s3_support.store_kwargs(endpoint))
    obstore.put(url_store, "zarr.json", b"{}")
    assert bytes(obstore.get(url_store, "zarr.json").bytes()) == b"{}"
    assert list_keys(endpoint, bucket) == {"pre/k": 5, "path.zarr/zarr.json": 2}


def _zarr_roundtrip(store, endpoint, bucket, prefix):
    import zarr

    data = np.arange(10 * 20, dtype="f4").reshape(10, 20) / 7
    arr = zarr.create_array(store, shape=data.shape, chunks=(5, 7), dtype="f4", fill_value=0)
    arr[:] = data
    back = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(back[:], data)
    keys = list_keys(endpoint, bucket, prefix)
    assert f"{prefix}/zarr.json" in keys
    assert sum(k.startswith(f"{prefix}/c/") for k in keys) == 2 * 3


def test_zarr_fsspec_store(s3_bucket):
    pytest.importorskip("s3fs")
    import zarr.storage

    endpoint, bucket = s3_bucket
    fs = s3_support.fs_factory(endpoint)()  # asynchronous=True, as zarr's FsspecStore needs
    assert fs.asynchronous
    store = zarr.storage.FsspecStore(fs, path=f"{bucket}/fs.zarr", read_only=False)
    try:
        _zarr_roundtrip(store, endpoint, bucket, "fs.zarr")
    finally:
        s3_support.close_s3fs(fs)  # on zarr's loop, where its aiohttp session lives


def test_zarr_obstore_store(s3_bucket):
    pytest.importorskip("obstore")
    import zarr.storage

    endpoint, bucket = s3_bucket
    store = zarr.storage.ObjectStore(s3_support.obstore_store(endpoint, bucket, "obs.zarr"), read_only=False)
    _zarr_roundtrip(store, endpoint, bucket, "obs.zarr")


def test_proxy_relays_without_faults(s3_bucket, fault_proxy):
    pytest.importorskip("s3fs")
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()
    client = s3_support.boto3_client(proxy.endpoint)
    try:
        # a file-like body makes botocore send "Expect: 100-continue"
        client.put_object(Bucket=bucket, Key="one", Body=io.BytesIO(b"1" * 300_000))
        assert client.head_object(Bucket=bucket, Key="one")["ContentLength"] == 300_000
        assert client.get_object(Bucket=bucket, Key="one")["Body"].read() == b"1" * 300_000
    finally:
        client.close()
    fs = s3_support.s3fs_filesystem(proxy.endpoint)
    fs.pipe(f"{bucket}/two", b"2" * 1000)
    assert fs.cat(f"{bucket}/two") == b"2" * 1000
    assert list_keys(endpoint, bucket) == {"one": 300_000, "two": 1000}
    st = proxy.stats
    assert st["expect_100"] >= 1
    assert st["forwarded"] == st["requests"] >= 5
    assert st["fail_503"] == st["dropped"] == st["delayed"] == st["upstream_errors"] == 0


def test_proxy_503_is_an_s3_slowdown(s3_bucket, fault_proxy):
    from botocore.exceptions import ClientError

    endpoint, bucket = s3_bucket
    proxy = fault_proxy(fail_503=1.0, methods=None)
    client = s3_support.boto3_client(proxy.endpoint, retries={"total_max_attempts": 1, "mode": "standard"})
    try:
        with pytest.raises(ClientError) as err:
            client.put_object(Bucket=bucket, Key="k", Body=io.BytesIO(b"x"))  # 100-continue, then 503
        assert err.value.response["Error"]["Code"] == "SlowDown"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as err:
            client.get_object(Bucket=bucket, Key="k")
        assert err.value.response["Error"]["Code"] == "SlowDown"
        proxy.fail_503 = 0.0  # changeable at run time
        client.put_object(Bucket=bucket, Key="k", Body=b"x")
    finally:
        client.close()
    assert proxy.stats["fail_503"] == 2 and proxy.stats["forwarded"] == 1, list(proxy.events)
    assert list_keys(endpoint, bucket) == {"k": 1}


def test_obstore_retries_through_faults(s3_bucket, fault_proxy):
    obstore = pytest.importorskip("obstore")
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(fail_503=0.3, drop=0.1, seed=7)
    store = s3_support.obstore_store(proxy.endpoint, bucket, "flaky", retry_config=FAST_RETRY)
    payloads = {f"k{i:02d}": uuid.uuid4().bytes * (i + 1) for i in range(50)}

    async def put_all():
        await asyncio.gather(*(obstore.put_async(store, k, v) for k, v in payloads.items()))

    asyncio.run(put_all())
    keys = list_keys(endpoint, bucket, "flaky/")
    assert keys == {f"flaky/{k}": len(v) for k, v in payloads.items()}
    for k in ("k00", "k49"):
        assert bytes(obstore.get(store, k).bytes()) == payloads[k]
    st = proxy.stats
    assert st["fail_503"] > 0 and st["dropped"] > 0
    assert st["forwarded"] >= 50 + 2
    assert st["requests"] == st["forwarded"] + st["fail_503"] + st["dropped"]


def test_proxy_delay(s3_bucket, fault_proxy):
    obstore = pytest.importorskip("obstore")
    endpoint, bucket = s3_bucket
    proxy = fault_proxy(delay=1.0, delay_seconds=0.3)
    store = s3_support.obstore_store(proxy.endpoint, bucket)
    t0 = time.perf_counter()
    obstore.put(store, "slow", b"s")
    assert time.perf_counter() - t0 >= 0.3
    assert proxy.stats["delayed"] == 1 and proxy.stats["forwarded"] == 1


def test_stopped_proxy_fails_fast_and_clearly(s3_bucket, fault_proxy):
    obstore = pytest.importorskip("obstore")
    endpoint, bucket = s3_bucket
    proxy = fault_proxy()
    store = s3_support.obstore_store(
        proxy.endpoint,
        bucket,
        client_options={"timeout": "2s", "connect_timeout": "1s"},
        retry_config={
            "max_retries": 2,
            "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=1), "base": 2},
            "retry_timeout": timedelta(seconds=5),
        },
    )
    obstore.put(store, "before", b"1")  # leaves a pooled keep-alive connection
    proxy.stop_listening()
    t0 = time.perf_counter()
    with pytest.raises(Exception) as err:
        obstore.put(store, "after", b"2")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5
    msg = str(err.value)
    assert "PUT" in msg and proxy.endpoint in msg and "error sending request" in msg
    assert SECRET_KEY not in msg
    with socket.socket() as s:  # the port really refuses now
        assert s.connect_ex(("127.0.0.1", proxy.port)) != 0

    proxy.resume_listening()
    obstore.put(store, "after", b"2")
    assert list_keys(endpoint, bucket) == {"before": 1, "after": 1}


def test_proxy_reports_unreachable_upstream():
    obstore = pytest.importorskip("obstore")
    port = s3_support.free_port()  # nothing listens there
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        store = s3_support.obstore_store(proxy.endpoint, "nobucket", retry_config={"max_retries": 0})
        with pytest.raises(Exception, match="502 Bad Gateway"):
            obstore.put(store, "k", b"1")
        assert proxy.stats["upstream_errors"] == 1


def test_proxy_script_fails_each_paths_first_requests_in_order(s3_bucket, fault_proxy):
    from botocore.exceptions import ClientError

    endpoint, bucket = s3_bucket
    with pytest.raises(ValueError, match="unknown action"):
        FaultProxy(endpoint, script=("fail_999",))
    proxy = fault_proxy(script=("fail_403", "fail_503"))
    client = s3_support.boto3_client(proxy.endpoint, retries={"total_max_attempts": 1, "mode": "standard"})
    try:
        for key in ("a", "b"):  # each object has its own script
            for code in ("AccessDenied", "SlowDown"):
                with pytest.raises(ClientError) as err:
                    client.put_object(Bucket=bucket, Key=key, Body=b"x")
                assert err.value.response["Error"]["Code"] == code
            client.put_object(Bucket=bucket, Key=key, Body=b"xy")
        assert client.get_object(Bucket=bucket, Key="a")["Body"].read() == b"xy"  # GET: not in `methods`
    finally:
        client.close()
    assert proxy.stats["failed"] == 2 and proxy.stats["fail_503"] == 2 and proxy.stats["forwarded"] == 3
    assert proxy.requests_per_path[("PUT", f"/{bucket}/a")] == 3
    assert list_keys(endpoint, bucket) == {"a": 2, "b": 2}
