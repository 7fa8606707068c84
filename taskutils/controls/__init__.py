"""Controlling when and how often work runs: ``unique``, ``debounce``, ``exclusive``, ``concurrency``,
``rate`` (options of ``task()``) and ``periodic`` jobs. See docs/controls.md."""

from .options import OPTIONS as OPTIONS
from .options import Controls as Controls
from .options import controls_of as controls_of
