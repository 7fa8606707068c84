"""The command line: ``python -m taskutils serve MODULE:ATTR``, ``cron MODULE:ATTR`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable, Sequence
from types import FrameType

from . import __version__
from .config import BACKENDS, get_backend
from .local import (
    DEFAULT_CONCURRENCY,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DISPATCH_TIMEOUT,
    STOP_GRACE,
    LocalServer,
    StubLogFilter,
    cloudtasks_mode,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """One line per task run from taskutils.local, on stderr; the handler's own lines too when verbose."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(StubLogFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("taskutils.local").setLevel(logging.INFO)
    logging.getLogger("taskutils.handler").setLevel(logging.INFO if verbose else logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m taskutils", description="Run taskutils tasks locally.")
    parser.add_argument("--version", action="version", version=f"taskutils {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a WSGI app beside taskutils.app and run its tasks as App Engine would",
        description=(
            "Serve MODULE:ATTR, mounted beside taskutils.app, with waitress on loopback. Google's "
            "taskqueue stub runs queued tasks with App Engine's retry and backoff rules, posting each "
            "to this server over HTTP. Datastore and memcache are Google's stubs too. Ctrl-C stops it."
        ),
    )
    serve.add_argument("app", metavar="MODULE:ATTR", help="the WSGI app to serve, e.g. main:app")
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port to bind, 0 for any free one (default: %(default)s)"
    )
    serve.add_argument(
        "--queue-yaml", metavar="FILE", help="queue.yaml with the app's queues (default: every queue name is accepted)"
    )
    serve.add_argument(
        "--storage",
        metavar="DIR",
        help="keep Datastore entities and queued tasks in this folder: they survive a restart or a crash "
        "(default: in memory). On the cloud backend, the Datastore emulator keeps its entities there (written "
        "when serve stops); the Cloud Tasks emulator keeps its tasks in memory only",
    )
    serve.add_argument(
        "--reload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="restart the app when a .py file under its folder changes, keeping queued tasks "
        "(in a temporary folder unless --storage is given)",
    )
    serve.add_argument(
        "--datastore-path",
        metavar="FILE",
        help="deprecated, use --storage: keep the datastore (only) in this file, saved when the server stops",
    )
    serve.add_argument(
        "--concurrency",
        type=_count,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="tasks run at once, at most (a queue's max_concurrent_requests still applies; default: %(default)s)",
    )
    serve.add_argument(
        "--deadline",
        type=_seconds,
        default=DISPATCH_TIMEOUT,
        metavar="SECONDS",
        help="a task's deadline when it sets no dispatch_deadline_usec (default: %(default)g, App Engine's)",
    )
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=STOP_GRACE,
        metavar="SECONDS",
        help="on Ctrl-C or SIGTERM, how long running tasks may take to finish (default: %(default)g)",
    )
    serve.add_argument(
        "--threads",
        type=_threads,
        metavar="N",
        help="waitress worker threads (default: one per task at once, plus 4 for the app's own requests)",
    )
    serve.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="appengine: Google's App Engine stubs in this process; cloud: the Google Cloud CLI's Datastore "
        "emulator and a Cloud Tasks emulator, each a process on loopback, started and stopped with the server "
        "unless DATASTORE_EMULATOR_HOST / CLOUD_TASKS_EMULATOR_HOST name running ones "
        "(default: $TASKUTILS_BACKEND, else appengine)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="also log the task handler's own line per task")
    serve.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one exits (for test harnesses and tools)",
    )

    cron = commands.add_parser(
        "cron",
        help="print the cron.yaml entry that runs the app's taskutils.periodic jobs",
        description="Import MODULE:ATTR and print the cron.yaml entry that fires its taskutils.periodic jobs.",
    )
    cron.add_argument("app", metavar="MODULE:ATTR", help="the app whose modules define the jobs, e.g. main:app")

    demo = commands.add_parser(
        "demo",
        help="run example tasks through the local server and exit 0 when all of them ran",
        description="Start the local server on a free port with an example app, run example tasks, print a summary.",
    )
    demo.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for every task (default: %(default)s)"
    )
    return parser


def _whole(low: int, high: int | None, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high (no upper bound when None)."""
    expected = f"{what} from {low} to {high}" if high is not None else f"{what}, at least {low}"

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
        return value

    return parse


_count = _whole(1, None, "a number of tasks")
_port = _whole(0, 65535, "a port")
_threads = _whole(1, None, "a number of threads")


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def _raised_in_user_code(error: BaseException) -> bool:
    """True when the traceback passes through the app's own code: not taskutils, the standard library or packages."""
    paths = sysconfig.get_paths()
    theirs = (
        os.path.dirname(os.path.abspath(__file__)),
        "<frozen",
        *(os.path.join(paths[name], "") for name in ("stdlib", "platstdlib", "purelib", "platlib")),
    )
    return any(not frame.filename.startswith(theirs) for frame in traceback.extract_tb(error.__traceback__))


def serve(args: argparse.Namespace) -> int:
    """Run the local server until SIGINT or SIGTERM, then print what it did.

    0 after a clean stop; 1 when a running task had to be abandoned (or the
    server died); 2 when it could not start.
    """
    backend = args.backend or get_backend()
    # On Cloud Tasks the emulator posts the tasks, so the handler's line is the line per task.
    configure_logging(args.verbose or cloudtasks_mode() or backend == "cloud")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("taskutils.local").warning(
            "binding %s: other machines can reach this server (task requests still come only from its own queue)",
            args.host,
        )
    if args.storage is not None and args.datastore_path is not None:
        print("taskutils serve: give --storage or --datastore-path, not both", file=sys.stderr)
        return 2
    if args.reload:
        from .local import reload

        return reload.supervise(
            args.argv,
            args.app,
            host=args.host,
            port=args.port,
            storage_dir=args.storage,
            grace=args.grace,
            exit_with_parent=args.exit_with_parent,
            backend=backend,
            queue_yaml=args.queue_yaml,
        )
    server = LocalServer(
        args.app,
        host=args.host,
        port=args.port,
        queue_yaml=args.queue_yaml,
        datastore_path=args.datastore_path,
        storage=args.storage,
        threads=args.threads,
        concurrency=args.concurrency,
        deadline=args.deadline,
        backend=backend,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for running tasks
            print("taskutils serve: stopping now, running tasks abandoned", file=sys.stderr, flush=True)
            os._exit(1)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except Exception as e:
            if _raised_in_user_code(e):
                traceback.print_exc()
            print(f"taskutils serve: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        print(f"taskutils serve: {server.url} (Ctrl-C to stop)", flush=True)
        print(f"taskutils serve: console at {server.url}/_ah/taskutils/", flush=True)
        parent = os.getppid()
        died = False
        while not stop.wait(0.5):
            if not server.running:
                print("taskutils serve: the server stopped unexpectedly", file=sys.stderr)
                died = True
                break
            if args.exit_with_parent and os.getppid() != parent:
                print("taskutils serve: the parent process exited", file=sys.stderr)
                break
        if not died:
            print(f"taskutils serve: stopping (running tasks have {args.grace:g} s to finish)", flush=True)
        summary = server.stop(args.grace)
        for line in summary.lines() if summary is not None else ():
            print(f"taskutils serve: {line}", flush=True)
        print("taskutils serve: stopped", flush=True)
        return 1 if died or (summary is not None and summary.abandoned) else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cron(spec: str) -> int:
    """Import the app (so its periodic jobs are declared) and print their cron.yaml entry."""
    from .controls.cron import cron_yaml, jobs
    from .local.wsgi import load_app

    sys.path.insert(0, os.getcwd())
    try:
        load_app(spec)
    except Exception as e:
        print(f"cannot import {spec}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not jobs():
        print(f"{spec} declares no taskutils.periodic jobs", file=sys.stderr)
    print(cron_yaml(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m taskutils``."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for serve --reload to start serve again
    if args.command == "serve":
        return serve(args)
    if args.command == "cron":
        return cron(args.app)
    from . import demo

    return demo.main(timeout=args.timeout)
