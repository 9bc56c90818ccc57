"""One error hierarchy for e2fastio.

Each class also derives from the builtin type Earth2Studio raises for the same
mistake, so ``except AssertionError`` / ``except ValueError`` code keeps working.
"""

from __future__ import annotations

from typing import Any


class E2FastIOError(Exception):
    """Base class of every error raised by e2fastio."""


class UnknownDimensionError(E2FastIOError, AssertionError):
    """A write or read names a dimension the store does not have."""


class CoordinateError(E2FastIOError, ValueError):
    """Coordinates do not match the store (missing value, wrong order, duplicates)."""


class DataShapeError(E2FastIOError, ValueError):
    """The data's shape does not match its coordinates."""


class UnsupportedDTypeError(E2FastIOError, TypeError):
    """The data's dtype cannot be stored (or cast safely to the array's dtype)."""


class ArrayNameError(E2FastIOError, ValueError):
    """An array name is not a safe, single-level key inside the store."""


class ArrayNameTypeError(ArrayNameError, TypeError):
    """An array name that is not a str at all (Earth2Studio raises TypeError there)."""


class ArrayNotFoundError(E2FastIOError, KeyError, IndexError):
    """No array of that name to read (Earth2Studio's NetCDF4Backend raises IndexError, zarr KeyError)."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class BackendClosedError(E2FastIOError, RuntimeError):
    """The backend was closed; open a new one to write again."""


class ReadOnlyError(E2FastIOError, RuntimeError):
    """The store was opened read-only (e.g. NetCDF ``mode="r"``); reopen it in a writing mode."""


class BackgroundWriteError(E2FastIOError, RuntimeError):
    """A non-blocking write failed in the background.

    Raised at the next ``write``, ``flush`` or ``close``; ``__cause__`` holds the
    original error (an ``OSError`` naming the chunk key, for example). Every
    other chunk was still stored.
    """


def background_error(check: Any, failed_so_far: Any) -> BackgroundWriteError | None:
    """Run `check` (which rethrows a recorded background error, once) and return what it raised,
    wrapped; None when nothing failed.

    `failed_so_far()` counts the chunks that failed; the message says every
    other chunk, including the current call's, is stored or queued.
    """
    try:
        check()
    except Exception as err:
        wrapped = BackgroundWriteError(
            f"an earlier non-blocking write failed: {err} (every other chunk, including this call's, is stored "
            f"or queued; {failed_so_far()} chunk(s) failed so far)"
        )
        wrapped.__cause__ = err
        return wrapped
    return None


def surface_background_error(check: Any, failed_so_far: Any) -> None:
    """Raise what `background_error` returns, if anything."""
    err = background_error(check, failed_so_far)
    if err is not None:
        raise err


class UploadError(E2FastIOError, OSError):
    """Chunks could not be uploaded to an object store after every retry.

    ``failures`` lists ``(chunk key, reason)``; every other chunk was stored.
    Reasons never contain credentials.
    """

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = list(failures)
        shown = "; ".join(f"{k}: {r}" for k, r in self.failures[:3])
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        super().__init__(f"{len(self.failures)} chunk(s) could not be uploaded: {shown}{more}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.failures,))
