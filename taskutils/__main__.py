"""``python -m taskutils``: see :mod:`taskutils.cli`."""

from .cli import main

raise SystemExit(main())
