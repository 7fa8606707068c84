"""``python -m taskutils`` (and the ``taskutils`` command): see :mod:`taskutils.cli`."""

import sys

from ._sdk import HAS_SDK, INSTALL_HINT


def run() -> int:
    """The CLI, once it is sure the App Engine SDK its local server runs on is installed."""
    if not HAS_SDK:  # serve, cron and demo run Google's App Engine stubs, on either backend
        print(
            "python -m taskutils runs tasks locally on Google's App Engine stubs (with --backend cloud too), "
            f"from appengine-python-standard, which is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    from .cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
