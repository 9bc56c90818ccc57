"""Durability of what zarr-python writes into a local store (``fsync=True``): the one home of metadata sync.

Data chunks are made durable by the native sink (each file fsynced before it
is renamed into place, then its directory). The metadata and the coordinate
arrays zarr-python writes are made durable here: each node's ``zarr.json``,
those of the groups on its way from the root, and the directories holding
their entries, innermost first (a directory's entry lives in its parent).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence


def fsync_path(path: str, *, directory: bool = False, missing_ok: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.EROFS):  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)


class MetadataSync:
    """Makes zarr-python's writes under a local store's `root` directory durable; `root=None`: does nothing."""

    def __init__(self, root: str | None) -> None:
        self.root = os.path.abspath(root) if root is not None else None

    def sync(self, nodes: Sequence[str], whole: Sequence[str] = ()) -> None:
        """Each node's ``zarr.json`` and its groups' up to the root (``""`` is the root group);
        for the nodes in `whole` (coordinate arrays) every file under them too."""
        root = self.root
        if root is None:
            return
        dirs = {os.path.dirname(root), root}
        for node in nodes:
            path = os.path.join(root, node) if node else root
            if node in whole:
                for d, _, files in os.walk(path):
                    dirs.add(d)
                    for f in files:
                        fsync_path(os.path.join(d, f))
            while True:  # the node and the groups its name implies
                fsync_path(os.path.join(path, "zarr.json"), missing_ok=True)
                if path == root:
                    break
                dirs.add(path)
                path = os.path.dirname(path)
        for d in sorted(dirs, key=len, reverse=True):  # innermost first
            fsync_path(d, directory=True)
