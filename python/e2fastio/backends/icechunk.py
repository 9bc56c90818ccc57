"""``IceChunkBackend``: Earth2Studio's Icechunk IO backend, with chunks written by native threads.

An Icechunk repository is a versioned Zarr store: writes go into a writable
session and become a snapshot only when committed. This backend is a
:class:`~e2fastio.ZarrBackend` whose store is such a session's store: the
native encoder threads cut and encode the chunks, and the upload path
(:class:`e2fastio.stores.uploads.Uploader`) hands them to the session store on
zarr-python's event loop. ``commit`` waits for every pending chunk, commits
the session and opens a new one on the same branch.

``icechunk`` (which needs Python 3.12 or newer) is imported only when a
backend is created, so ``import e2fastio`` never needs it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import zarr

from e2fastio.backends.zarr import DEFAULT_CHUNKS, ZarrBackend
from e2fastio.stores import remote

if TYPE_CHECKING:
    import icechunk

logger = logging.getLogger(__name__)

# icechunk retries its own storage requests (its repository config sets how
# often); a chunk the session store refuses is not retried on top of that.
_UPLOAD_RETRIES = 0
_UPLOAD_TIMEOUT = 600.0  # seconds one chunk may take to enter the session store



def _import_icechunk() -> Any:
    try:
        import icechunk
    except ImportError as err:
        raise ImportError(
            "e2fastio.IceChunkBackend requires the optional 'icechunk' package (icechunk >= 2, Python >= 3.12): "
            "pip install 'e2fastio[icechunk]'"
        ) from err
    return icechunk


class IceChunkBackend(ZarrBackend):
    """Writes to an `Icechunk <https://icechunk.io/>`_ repository, with Earth2Studio's ``IceChunkBackend`` interface.

    ``add_array``, ``write``, ``read`` and the mapping helpers behave as for
    :class:`e2fastio.ZarrBackend`; the store is the writable session of
    `branch`. Writes are visible to this backend (and to readers of
    ``backend.session.store``) once stored, but they become part of the
    repository only when :meth:`commit` is called. Writes never committed
    are lost: a warning is logged when a backend with uncommitted writes is
    garbage-collected or still open at interpreter exit.

    Parameters
    ----------
    storage : icechunk.Storage | str | os.PathLike, optional
        Where the repository lives: an ``icechunk.Storage`` (for example
        ``icechunk.s3_storage(...)``), a local directory (opened with
        ``icechunk.local_filesystem_storage``), or ``None`` (default) for an
        in-memory repository.
    branch : str, optional
        Branch to write to, by default ``"main"``; created from the tip of
        ``"main"`` if the repository does not have it.
    repo_kwargs : dict, optional
        Keyword arguments of ``icechunk.Repository.open_or_create``
        (``config``, ``authorize_virtual_chunk_access``, ...).
    chunks : dict[str, int], optional
        Chunk size per dimension; dimensions not listed get one chunk.
    backend_kwargs : dict, optional
        Keyword arguments of ``zarr.group`` for the root group, by default
        ``{"overwrite": False}``.
    zarr_codecs : zarr codec(s), optional
        Compressor(s) of new arrays; ``None`` stores chunks uncompressed.
    blocking : bool, optional
        ``False`` (default, as in Earth2Studio): ``write`` copies the data
        into a staging ring and returns; chunks are encoded and stored into
        the session in the background. ``read``, ``__getitem__``, ``flush``
        and ``commit`` wait for them first. ``True``: ``write`` returns when
        its chunks are in the session. Background errors are raised at the
        next ``write``, ``flush``, ``commit`` or ``close``.
    pool_size : int, optional
        Chunks handed to the session store at once (Earth2Studio: its
        background write threads), by default 8. The encoder threads are set
        by `threads`.
    threads, max_buffer_bytes : optional, keyword-only
        Native encoder threads and the bound on staging memory, as for
        :class:`e2fastio.ZarrBackend`.

    Notes
    -----
    One backend writes one session; several processes writing one branch at
    once conflict at commit (``icechunk.ConflictError``), as with
    Earth2Studio. Icechunk's local-filesystem storage is not safe for
    concurrent commits; use an object store for that.
    """

    def __init__(
        self,
        storage: icechunk.Storage | str | os.PathLike[str] | None = None,
        branch: str = "main",
        repo_kwargs: dict[str, Any] = {},  # noqa: B006 - Earth2Studio's signature
        chunks: dict[str, int] = DEFAULT_CHUNKS,
        backend_kwargs: dict[str, Any] = {"overwrite": False},  # noqa: B006
        zarr_codecs: Any = None,
        blocking: bool = False,
        pool_size: int = 8,
        *,
        threads: int | None = None,
        max_buffer_bytes: int | None = None,
    ) -> None:
        ic = _import_icechunk()
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"branch must be a non-empty branch name (str), got {branch!r}")
        if not isinstance(repo_kwargs, dict):
            raise TypeError(f"repo_kwargs must be a dict of icechunk.Repository.open_or_create options, "
                            f"got {type(repo_kwargs).__name__}")
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if storage is None:
            storage = ic.in_memory_storage()
        elif isinstance(storage, (str, os.PathLike)):
            path = os.fspath(storage)
            if "://" in path:
                raise ValueError(
                    f"storage={path!r}: a string is a local directory; for an object store pass an "
                    "icechunk.Storage, e.g. icechunk.s3_storage(bucket=..., prefix=...)"
                )
            if not path:
                raise ValueError("storage must not be empty: pass a directory, an icechunk.Storage, or None")
            storage = ic.local_filesystem_storage(path)
        elif not isinstance(storage, ic.Storage):
            raise TypeError(
                f"storage={storage!r}: expected an icechunk.Storage, a local directory path, or None (in memory)"
            )

        self.repo = ic.Repository.open_or_create(storage, **repo_kwargs)
        if branch not in self.repo.list_branches():
            self.repo.create_branch(branch, self.repo.lookup_branch("main"))
        self.branch = branch
        self.session = self.repo.writable_session(branch)
        self._pid = os.getpid()
        self._warned = False
        options = remote.RemoteOptions(concurrency=pool_size, retries=_UPLOAD_RETRIES, timeout=_UPLOAD_TIMEOUT)
        location = remote.session_location(self.session.store, f"icechunk branch {branch!r}", options)
        super().__init__(
            location,
            chunks,
            backend_kwargs,
            zarr_codecs,
            threads=threads,
            max_buffer_bytes=max_buffer_bytes,
            blocking=blocking,
            process_group=False,  # one session per backend; see Notes
        )
        # Closed at exit like any backend, then told if its writes were never committed: that
        # message says what matters for a repository (not the pending-chunk one of ZarrBackend).
        self._warn_at_exit = False
        self._watch_at_exit()

    # ------------------------------------------------------------------ transactions
    def commit(self, message: str, **kwargs: Any) -> str:
        """Store every pending write, commit the session as a new snapshot of the branch, and start a new session.

        The backend stays usable: later writes go into the new session until
        the next ``commit``. Allowed after :meth:`close` (which stored every
        pending chunk into the session).

        Parameters
        ----------
        message : str
            The commit message.
        **kwargs
            Passed to ``icechunk.Session.commit`` (``metadata``, ``allow_empty``,
            ``rebase_with``, ...).

        Returns
        -------
        str
            The ID of the new snapshot.

        Raises
        ------
        BackgroundWriteError
            A pending chunk could not be stored; nothing was committed. The
            session keeps every other chunk, and the next ``commit`` commits them.
        icechunk.IcechunkError
            Nothing changed since the last commit (pass ``allow_empty=True``),
            or the commit failed; ``icechunk.ConflictError`` when another writer
            committed to the branch first (pass ``rebase_with``). The session
            and its writes are kept; commit again once resolved.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a str (the commit message), got {type(message).__name__}")
        self.pipeline.check_process("commit")
        if not self.closed:
            self.pipeline.drain()  # a failed chunk raises here, before anything is committed
        snapshot_id: str = self.session.commit(message, **kwargs)
        logger.debug("committed snapshot %s to icechunk branch %r", snapshot_id, self.branch)
        self._new_session()
        return snapshot_id

    def _new_session(self) -> None:
        """Continue on a new writable session of the branch (the committed one is read-only)."""
        self.session = self.repo.writable_session(self.branch)
        self.store = self.session.store
        self.root = zarr.open_group(self.store, mode="r+")
        # Targets' zarr arrays belong to the old session; a closed backend's uploads stopped.
        self.pipeline.retarget(self.root, self.store, uploads=not self.closed)
        self._warned = False

    def close(self) -> None:
        """Store every pending write into the session and stop the encoder threads. Idempotent.

        Does not commit: call :meth:`commit` (before or after ``close``) to
        keep the writes in the repository. Raises the first background error.
        """
        super().close()

    # ------------------------------------------------------------------ uncommitted writes
    def _after_exit_close(self) -> None:
        if self._pid == os.getpid():  # not a forked child's copy
            self._warn_if_uncommitted("at interpreter exit")

    def _warn_if_uncommitted(self, when: str) -> None:
        if self._warned or not self._members:
            return  # nothing to lose: at most the root group of a new repository
        if self.session.has_uncommitted_changes:
            self._warned = True
            logger.warning(
                "IceChunkBackend for branch %r %s with uncommitted writes: they are not in the repository "
                "and are lost. Call commit() to keep them.",
                self.branch,
                when,
            )

    def __del__(self) -> None:
        try:
            if getattr(self, "_pid", None) == os.getpid() and hasattr(self, "_members"):
                self._warn_if_uncommitted("garbage-collected")
        except Exception:  # noqa: BLE001 - the interpreter may be shutting down
            pass
