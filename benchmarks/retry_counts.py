"""PUT requests per chunk for each injected fault, through a loopback S3 server.

Starts moto (own process) and the test suite's fault proxy, which fails every
PUT of one chunk object in the same way; a blocking ZarrBackend then writes
that one chunk. Reported per fault: PUTs the proxy saw, retries of e2fastio's
own loop, seconds until the backend gave up, and the outcome.

    python benchmarks/retry_counts.py                       # URL store, upload_retries=6
    python benchmarks/retry_counts.py --form obstore --upload-retries 0   # a store passed in, its own retries
    python benchmarks/retry_counts.py --form s3fs --upload-retries 0

Forms: ``url`` (``s3://`` with store_kwargs: one retry policy, ours),
``obstore`` (an ``S3Store`` with obstore's default retries) and ``s3fs`` (a
zarr ``FsspecStore`` over s3fs with its and botocore's defaults). The
``timeout`` fault holds each request 2.5 s; the client's request timeout is
1 s (``client_options``; s3fs: ``read_timeout``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr.storage

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import s3_support as S  # noqa: E402  (the test suite's loopback S3 server helper)

from e2fastio import UploadError, ZarrBackend  # noqa: E402

FAULTS = ["fail_503", "fail_500", "fail_429", "drop", "reset", "timeout", "fail_400", "fail_403", "fail_404"]


def _location(form: str, proxy: S.FaultProxy, bucket: str, prefix: str) -> tuple[object, dict]:
    if form == "url":
        return f"s3://{bucket}/{prefix}", {"store_kwargs": S.store_kwargs(proxy.endpoint,
                                                                          client_options={"timeout": "1s"})}
    if form == "obstore":
        return S.obstore_store(proxy.endpoint, bucket, prefix, client_options={"timeout": "1s"}), {}
    fs = S.s3fs_filesystem(proxy.endpoint, asynchronous=True,
                           config_kwargs={"s3": {"addressing_style": "path"}, "read_timeout": 1})
    return zarr.storage.FsspecStore(fs, path=f"{bucket}/{prefix}"), {}


def measure(server: S.MotoServer, bucket: str, form: str, fault: str, retries: int) -> dict:
    coords = OrderedDict(lat=np.linspace(0, 1, 8), lon=np.linspace(0, 1, 8))
    with S.FaultProxy(server.endpoint, delay_seconds=2.5) as proxy:
        location, kw = _location(form, proxy, bucket, f"{form}-{fault}.zarr")
        io = ZarrBackend(location, upload_retries=retries, upload_timeout=120, **kw)
        io.add_array(coords, "t2m")
        io.flush()
        proxy.script = ("delay" if fault == "timeout" else fault,) * 1000  # every PUT of the chunk
        proxy.reset_stats()
        t0 = time.monotonic()
        try:
            io.write(np.ones((8, 8), np.float32), coords, "t2m")
            outcome = "stored"
        except UploadError as err:
            reason = err.failures[0][1]
            outcome = "not retried" if "not retried" in reason else reason.split(" failed ", 1)[1].split(":")[0]
        seconds = time.monotonic() - t0
        ours = io.stats()["uploads"]["retries"]
        io.close()
        puts = sum(1 for method, path, _ in proxy.events if method == "PUT" and "/c/" in path)
    return dict(form=form, fault=fault, upload_retries=retries, puts=puts, our_retries=ours,
                seconds=round(seconds, 1), outcome=outcome)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--form", choices=["url", "obstore", "s3fs"], default="url")
    ap.add_argument("--upload-retries", type=int, default=6)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    with S.MotoServer() as server:
        bucket = S.create_bucket(server.endpoint)
        print(f"{'fault':10} {'PUTs':>5} {'ours':>5} {'seconds':>8}  outcome")
        for fault in args.faults.split(","):
            row = measure(server, bucket, args.form, fault, args.upload_retries)
            rows.append(row)
            print(f"{fault:10} {row['puts']:5d} {row['our_retries']:5d} {row['seconds']:8.1f}  {row['outcome']}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
