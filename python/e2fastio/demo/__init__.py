"""The ensemble example workflow of Earth2Studio's IO example, offline: ``e2fastio demo``."""

from e2fastio.demo.model import AdvectionDiffusionModel, initial_state
from e2fastio.demo.workflow import run_demo

__all__ = ["AdvectionDiffusionModel", "initial_state", "run_demo"]
