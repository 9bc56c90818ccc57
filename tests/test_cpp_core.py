"""Build and run the C++ tests of the core (pool, staging bound, codec, sinks):
by default in a plain Debug build, every test in full; with the long checks
(E2FASTIO_FULL=1, `scripts/test.sh --full`) once more under AddressSanitizer +
UndefinedBehaviorSanitizer. GCC 12's sanitizer runtime does not lock its
allocator around fork(), so a child there can hang on a lock of the
sanitizer's, not of ours, and the fork tests run in a reduced form under it
(see kSanitizerRuntime in csrc/tests/test_main.cpp): the plain build is where
they run in full."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build(sanitize: str) -> Path:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is a test requirement (pip install e2fastio[test])"
    build = ROOT / "build" / f"cpptests-{sanitize.replace(',', '-') or 'plain'}"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Debug",
         "-DE2FASTIO_BUILD_PYTHON=OFF", "-DE2FASTIO_BUILD_TESTS=ON", f"-DE2FASTIO_SANITIZE={sanitize}",
         f"-DPython_EXECUTABLE={sys.executable}"],
        check=True, capture_output=True, text=True,
    )
    b = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-4000:]
    return build


def _run(build: Path, *args: str) -> str:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([str(build / "e2fastio_cpp_tests"), *args], capture_output=True, text=True, env=env,
                       timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " 0 failed checks" in r.stdout
    assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr, r.stderr[-4000:]
    return r.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cpp_core_under_sanitizers():
    _run(_build(os.environ.get("E2FASTIO_SANITIZE", "address,undefined")))


@pytest.mark.timeout(600)
def test_cpp_core_in_a_plain_build():
    out = _run(_build(""))
    forks = [line for line in out.splitlines() if line.startswith("PASS ") and "fork" in line]
    assert len(forks) == 2, out[-2000:]  # both fork tests ran (in full: this runtime is not a sanitizer's)
