"""The package version: one source of truth, ``version`` in pyproject.toml.

An installed e2fastio reads it from its distribution's metadata. Run from a
source tree (``PYTHONPATH=python``, or an editable install whose files are not
where the metadata says), the version compiled into the extension is used: the
build took it from the same pyproject.toml.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def _version() -> str:
    here = Path(__file__).resolve().parent
    try:
        dist = metadata.distribution("e2fastio")
    except metadata.PackageNotFoundError:
        dist = None
    # Another e2fastio may be installed while this one runs from a source tree: its
    # metadata describes that one, not us.
    if dist is not None and Path(str(dist.locate_file("e2fastio"))).resolve() == here:
        return dist.version
    from e2fastio import _core

    return _core.__version__


__version__ = _version()
