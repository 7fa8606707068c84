"""``serve`` fires ``taskutils.periodic`` jobs on schedule, as App Engine's cron service would.

No local server of Google's runs cron.yaml; ``serve`` sends the cron route a GET with
``X-Appengine-Cron: true`` when it starts and at the start of every minute, through the
app as deployed. The route adds each due job as a task named after its slot, so a
restart within a slot (a ``kill -9`` of ``serve --storage`` included) adds nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request

from ..controls.spec import CRON_PATH

log = logging.getLogger("taskutils.local")

SETTLE = 0.5  # seconds after the minute starts
RETRY = 5.0  # seconds until a failed firing is tried again (slots dedupe, so trying again adds nothing twice)


class PeriodicFiring:
    """A thread that calls the periodic jobs' cron route now and every minute, while any job is declared.

    ``headers`` prove the request is the server's own (its dispatch secret), so that its
    ``X-Appengine-Cron`` header is kept, as App Engine keeps its cron service's.
    """

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.url = base_url + CRON_PATH
        self.headers = {**(headers or {}), "X-Appengine-Cron": "true"}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeriodicFiring:
        self._thread = threading.Thread(target=self._loop, name="taskutils-periodic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            fired = self.fire()
            delay = 60.0 - time.time() % 60.0 + SETTLE
            if not fired:  # e.g. the queue (Cloud Tasks' emulator) not up yet: the slot is added when it can be
                delay = min(delay, RETRY)

    def fire(self) -> bool:
        """Call the cron route once; False when it could not add the due jobs."""
        from ..controls.jobs import jobs

        if not jobs():
            return True
        request = urllib.request.Request(self.url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except (OSError, urllib.error.URLError) as e:
            log.warning("periodic jobs: the cron route %s answered %s", CRON_PATH, e)
            return False
        return True
