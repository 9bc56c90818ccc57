"""``IOBackend``: the protocol every Earth2Studio IO backend follows, importable from e2fastio.

Earth2Studio's workflows (``earth2studio.run.deterministic``, ``ensemble``, ...)
need only two methods of an ``io=`` object: ``add_array`` once with the full
coordinates, then ``write`` at every step. Any object with both satisfies
``isinstance(obj, IOBackend)``; every backend of e2fastio does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

CoordSystem = Mapping[str, np.ndarray]


@runtime_checkable
class IOBackend(Protocol):
    """What a workflow calls on its ``io=`` argument."""

    def add_array(self, coords: CoordSystem, array_name: str | list[str], **kwargs: Any) -> None:
        """Create the array(s) `array_name` over the dimensions and values of `coords`."""
        ...

    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Store tensor(s) `x` (one per name) at the coordinates `coords`."""
        ...
