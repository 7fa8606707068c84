"""The local console at ``/_ah/taskutils/``, driven in a real headless Chromium against a real ``serve``.

One ``python -m taskutils serve console_app:app`` subprocess serves the module;
every browser test runs twice, once with JavaScript and once without (Chrome's
``profile.managed_default_content_settings.javascript: 2``), in Debian's
Chromium through its own chromedriver (nothing is downloaded). Screenshots of
each page go to a pytest temporary folder.
"""

from __future__ import annotations

import io
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.serving import ServeProcess

CHROMIUM = os.environ.get("TASKUTILS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TASKUTILS_CHROMEDRIVER", "/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"
SECRET = "console-test-signing-key-0123456789"
CONSOLE = "/_ah/taskutils"
BROWSER_ZONE = "Asia/Tokyo"  # UTC+9, no daylight saving time

QUEUE_YAML = """\
queue:
- name: default
  rate: 100/s
- name: parked
  rate: 50/s
  bucket_size: 7
  max_concurrent_requests: 3
- name: doomed
  rate: 100/s
- name: forced
  rate: 100/s
- name: failing
  rate: 100/s
  retry_parameters:
    task_retry_limit: 20
    min_backoff_seconds: 600
"""


def _browser_parts_missing() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return missing


if _browser_parts_missing() and not IN_CI:
    pytest.skip(f"no browser to drive: {', '.join(_browser_parts_missing())} missing", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One serve subprocess for the module, with the queues above and a known signing key."""
    folder = tmp_path_factory.mktemp("console")
    queue_yaml = folder / "queue.yaml"
    queue_yaml.write_text(QUEUE_YAML)
    proc = ServeProcess(
        "console_app:app",
        folder / "serve.log",
        "--queue-yaml",
        str(queue_yaml),
        env={"TASKUTILS_SECRET_KEYS": SECRET},
    )
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module", params=["with-javascript", "without-javascript"])
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Headless Chromium through /usr/bin/chromedriver, JavaScript on or off; one per mode per module."""
    missing = _browser_parts_missing()
    if missing:
        pytest.fail(f"CI=true and the browser tests cannot run: {', '.join(missing)} missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={request.getfixturevalue('tmp_path_factory').mktemp('chromium')}")
    if request.param == "without-javascript":
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    # An explicit driver path: Selenium Manager never runs and nothing is downloaded.
    # The browser's zone is not UTC, so the console's times show in both.
    service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "TZ": BROWSER_ZONE})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.javascript = request.param == "with-javascript"  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """A browser on the console, with the server that serves it."""

    def __init__(self, driver: Any, server: ServeProcess, shots: Path, name: str) -> None:
        self.driver = driver
        self.server = server
        self.shots = shots
        self.name = name
        self.tag = "js" if driver.javascript else "nojs"

    def open(self, path: str = "/") -> Console:
        self.driver.get(self.server.base + CONSOLE + path)
        return self

    def key(self, what: str) -> str:
        return f"{what}-{self.tag}"

    def heading(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "h1").text)

    def notice(self) -> str:
        found = self.driver.find_elements(By.CSS_SELECTOR, ".notice")
        return str(found[0].text) if found else ""

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "main").text)

    def row(self, text: str) -> WebElement:
        """The table row that mentions text."""
        rows = [r for r in self.driver.find_elements(By.CSS_SELECTOR, "tbody tr") if text in r.text]
        assert rows, f"no row with {text!r} on {self.driver.current_url}:\n{self.text()}"
        return rows[0]

    def has_row(self, text: str) -> bool:
        try:
            return any(text in r.text for r in self.driver.find_elements(By.CSS_SELECTOR, "tbody tr"))
        except StaleElementReferenceException:  # the script replaced the page's content meanwhile
            return False

    def press(self, label: str, within: WebElement | None = None) -> None:
        """Click the button labelled exactly label (in within, or on the page) and wait for the next page."""
        scope = within if within is not None else self.driver
        [button] = [b for b in scope.find_elements(By.TAG_NAME, "button") if b.text == label]
        old = self.driver.find_element(By.TAG_NAME, "html")
        button.click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                old.tag_name  # noqa: B018 - raises once the page has been replaced
            except Exception:  # noqa: BLE001 - StaleElementReferenceException and kin
                return
            time.sleep(0.05)
        raise AssertionError(f"pressing {label!r} did not load a page")

    def follow(self, link_text: str) -> None:
        self.driver.find_element(By.LINK_TEXT, link_text).click()

    def shoot(self, what: str) -> Path:
        path = self.shots / f"{self.name}-{self.tag}-{what}.png"
        self.driver.save_screenshot(str(path))
        return path

    def enqueue(self, kind: str, key: str, **query: object) -> str:
        params = "&".join([f"key={key}", *(f"{k}={v}" for k, v in query.items())])
        return str(self.server.post(f"/enqueue/{kind}?{params}")["name"])

    def ran(self, key: str) -> int:
        return int(self.server.get("/ran").get(key, 0))


@pytest.fixture
def console(browser: Any, server: ServeProcess, shots: Path, request: pytest.FixtureRequest) -> Console:
    return Console(browser, server, shots, request.node.originalname)


def test_the_queue_list_shows_every_queue_with_its_settings_and_links_to_each(console):
    name = console.enqueue("record", console.key("listed"), queue="parked", countdown=3600)

    console.open("/")
    console.shoot("queues")

    assert console.heading() == "Queues"
    parked = console.row("parked")
    cells = [c.text for c in parked.find_elements(By.TAG_NAME, "td")]
    assert int(cells[1]) >= 1  # waiting
    assert cells[3] == "0"  # failed recently
    assert "in 59m" in cells[4] or "in 1h" in cells[4]  # next ETA
    assert "rate 50/s" in cells[5] and "bucket size 7" in cells[5] and "max_concurrent_requests 3" in cells[5]
    assert "queue.yaml settings" in console.driver.find_element(By.TAG_NAME, "thead").text.lower()
    assert "defaults" not in console.text()
    assert "min_backoff_seconds 600 s" in console.row("failing").text
    assert "task_retry_limit 20" in console.row("failing").text
    console.follow("parked")
    assert console.heading() == "Queue parked"
    assert console.has_row(name)


def test_a_waiting_task_runs_when_run_now_is_pressed(console):
    key = console.key("run-now")
    name = console.enqueue("record", key, queue="parked", countdown=3600)
    console.open("/queues/parked")
    row = console.row(name)
    assert "parked" not in row.text and "console_app.record" in row.text
    assert console.ran(key) == 0

    console.press("Run now", within=row)

    assert console.heading() == "Queue parked"
    assert console.notice() == f"Task {name} will run now."
    console.server.wait_for(lambda: console.ran(key) == 1, f"{name} to run after Run now")
    console.open("/queues/parked")
    assert not console.has_row(name)


def test_a_task_running_after_run_now_shows_as_running_and_is_counted_once(console):
    key = console.key("forced")
    name = console.enqueue("nap", key, queue="forced", countdown=3600)
    console.open("/queues/forced")

    console.press("Run now", within=console.row(name))
    console.server.wait_for(
        lambda: "running now" in console.open("/queues/forced").row(name).text, f"{name} to be running"
    )

    summary = console.driver.find_element(By.CSS_SELECTOR, ".summary").text
    assert summary.startswith("0 waiting · 1 running · 0 failed recently · next ETA —"), summary
    assert "1970" not in console.text() and "ago" not in console.row(name).text
    cells = [c.text for c in console.open("/").row("forced").find_elements(By.TAG_NAME, "td")]
    assert cells[1:5] == ["0", "1", "0", "—"], cells  # waiting, running, failed recently, next ETA
    console.open(f"/queues/forced/tasks/{name}")
    assert "running now" in console.text() and "1970" not in console.text()
    console.server.wait_for(lambda: console.ran(key) == 1, f"{name} to finish")


def test_the_page_of_a_task_that_is_not_queued_and_never_ran_says_so_once(console):
    console.open("/queues/parked/tasks/no-such-task")

    text = console.text()
    assert "No task named no-such-task is queued in parked, and none has run" in text
    assert "ran to completion" not in text and "has not run yet" not in text


def test_a_deleted_task_never_runs(console):
    key = console.key("deleted")
    name = console.enqueue("record", key, queue="parked", countdown=4)
    due = time.monotonic() + 4
    console.open("/queues/parked")

    console.press("Delete", within=console.row(name))

    assert console.notice() == f"Task {name} was deleted: it will not run."
    assert not console.has_row(name)
    time.sleep(max(0.0, due - time.monotonic()) + 1.5)
    assert console.ran(key) == 0


def test_purge_asks_for_confirmation_then_deletes_every_task_of_the_queue(console):
    keys = [console.key(f"purged-{i}") for i in range(2)]
    # Long enough for the pages below to load on a loaded machine before the tasks are due.
    names = [console.enqueue("record", key, queue="doomed", countdown=8) for key in keys]
    due = time.monotonic() + 8
    console.open("/queues/doomed")

    console.press("Purge")

    assert console.heading() == "Purge queue doomed?"
    assert "2 waiting tasks will be deleted" in console.text()
    console.shoot("purge")
    console.open("/queues/doomed")
    assert all(console.has_row(name) for name in names), "the first Purge must only ask"
    console.press("Purge")
    console.press("Purge")
    assert console.heading() == "Queue doomed"
    assert console.notice() == "Queue doomed was purged: its tasks will not run."
    assert not any(console.has_row(name) for name in names)
    time.sleep(max(0.0, due - time.monotonic()) + 1.5)
    assert [console.ran(key) for key in keys] == [0, 0]


def test_a_failing_task_shows_its_retry_count_and_error_line_and_retry_runs_it_again(console):
    key = console.key("failing")
    name = console.enqueue("fail", key, queue="failing")
    console.server.wait_for(lambda: console.ran(key) == 1, f"{name} to fail once")

    console.open("/queues/failing")
    row = console.row(name)
    assert row.find_element(By.CSS_SELECTOR, ".retries").text == "1"
    assert "500" in row.text
    assert row.find_element(By.CSS_SELECTOR, ".error").text == f"RuntimeError: boom {key}"
    assert [b.text for b in row.find_elements(By.TAG_NAME, "button")] == ["Retry", "Delete"]
    console.shoot("failing")

    console.press("Retry", within=row)

    assert console.notice() == f"Task {name} will run again now."
    # The queue would wait 600 s (min_backoff_seconds) before its next attempt.
    console.server.wait_for(lambda: console.ran(key) == 2, f"{name} to run again after Retry")
    console.server.wait_for(
        lambda: console.open("/queues/failing").row(name).find_element(By.CSS_SELECTOR, ".retries").text == "2",
        "the retry count to reach 2",
    )


def test_a_task_detail_shows_its_headers_and_decoded_call_and_never_the_signing_key(console):
    key = console.key("detail")
    name = console.enqueue("record", key, queue="parked", countdown=3600)
    console.open("/queues/parked")

    console.follow(name)

    assert console.heading() == f"Task {name}"
    text = console.text()
    assert "console_app.record" in text
    assert f"('{key}')" in console.driver.find_element(By.CSS_SELECTOR, "pre.call").text
    headers = console.driver.find_element(By.CSS_SELECTOR, "table.headers").text
    assert "Host" in headers and f"127.0.0.1:{console.server.port}" in headers
    assert "signed" in text
    assert [b.text for b in console.driver.find_elements(By.TAG_NAME, "button")] == ["Run now", "Delete"]
    console.shoot("task")
    for page in ("/", "/queues/parked", f"/queues/parked/tasks/{name}", "/runs", "/handles"):
        source = console.open(page).driver.page_source
        assert SECRET not in source and SECRET.encode().hex() not in source, page


def test_the_runs_page_lists_recent_runs_with_status_duration_and_outcome(console):
    ok_key, bad_key = console.key("runs-ok"), console.key("runs-bad")
    ok_name = console.enqueue("record", ok_key)
    bad_name = console.enqueue("fail", bad_key, queue="failing")
    console.server.wait_for(lambda: console.ran(ok_key) == 1 and console.ran(bad_key) == 1, "both tasks to run")

    console.server.wait_for(lambda: console.open("/runs").has_row(bad_name), "the runs to be listed")
    console.shoot("runs")

    ok_cells = [c.text for c in console.row(ok_name).find_elements(By.TAG_NAME, "td")]
    assert ok_cells[1:5] == ["default", ok_name, "console_app.record", "200"]
    assert ok_cells[5].endswith(" ms") and ok_cells[6] == "done"
    bad_cells = [c.text for c in console.row(bad_name).find_elements(By.TAG_NAME, "td")]
    assert bad_cells[1:5] == ["failing", bad_name, "console_app.fail", "500"]
    assert bad_cells[6] == f"RuntimeError: boom {bad_key}"
    console.follow(ok_name)
    assert "no longer queued" in console.text()


def test_a_group_shows_its_progress_as_done_over_total(console):
    done_key, waiting_key = console.key("group-done"), console.key("group-waiting")
    done = console.server.post(f"/group?key={done_key}&n=3")["id"]
    waiting = console.server.post(f"/group?key={waiting_key}&n=2&countdown=3600")["id"]
    console.server.wait_for(lambda: all(console.ran(f"{done_key}-{i}") for i in range(3)), "the group to run")

    console.server.wait_for(lambda: "3/3" in console.open("/handles").row(done).text, "the group to show 3/3")
    console.shoot("handles")

    assert "0/2" in console.row(waiting).text
    console.follow(done)
    assert "3/3" in console.driver.find_element(By.CSS_SELECTOR, ".summary").text


def test_the_script_offers_auto_refresh_only_with_javascript(console):
    console.open("/runs")
    boxes = console.driver.find_elements(By.ID, "auto-refresh")
    if not console.driver.javascript:
        assert boxes == []
        return
    [box] = boxes
    key = console.key("refreshed")
    try:
        box.click()
        name = console.enqueue("record", key)
        console.server.wait_for(lambda: console.ran(key) == 1, "the task to run")
        console.server.wait_for(lambda: console.has_row(name), "the runs page to refresh itself", timeout=15)
        assert console.driver.find_element(By.ID, "auto-refresh").is_selected()
    finally:
        console.driver.execute_script("window.localStorage.clear()")  # off again, for the tests that follow


def test_an_action_without_the_forms_token_is_refused(server):
    name = str(server.post("/enqueue/record?key=forged&queue=parked&countdown=3600")["name"])

    status, _ = server.request("POST", f"{CONSOLE}/queues/parked/tasks/{name}/delete", b"csrf=forged")
    assert status == 403
    status, _ = server.request(
        "POST",
        f"{CONSOLE}/queues/parked/tasks/{name}/delete",
        b"csrf=forged",
        headers={"Cookie": "taskutils_console=" + "x" * 43},
    )
    assert status == 403
    status, page = server.request("GET", f"{CONSOLE}/queues/parked/tasks/{name}")
    assert status == 200 and name.encode() in page


def test_the_console_refuses_a_host_other_than_loopback(server):
    request = urllib.request.Request(server.base + CONSOLE + "/", headers={"Host": "rebound.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403


def test_serve_prints_the_console_url_when_it_starts(server):
    assert f"taskutils serve: console at {server.base}{CONSOLE}/" in server.log()


def test_viewing_a_task_never_loads_or_shows_its_arguments_objects(server, tmp_path):
    loaded, shown = tmp_path / "loaded", tmp_path / "shown"
    name = str(
        server.post(f"/enqueue/canaries?key=canaries&queue=parked&countdown=3600&loaded={loaded}&shown={shown}")["name"]
    )

    status, page = server.request("GET", f"{CONSOLE}/queues/parked/tasks/{name}")

    assert status == 200
    assert not loaded.exists() and not shown.exists()
    text = page.decode()
    assert "console_app.hold" in text
    assert "&lt;console_app.OpensWhenShown object&gt;" in text and "42, &#x27;plain&#x27;" in text
    assert f"&lt;{io.open.__module__}.open object&gt;" in text  # io.open before Python 3.12, _io.open after


def test_a_group_id_no_group_can_have_answers_404(server):
    status, page = server.request("GET", f"{CONSOLE}/handles/{'g' * 1501}")

    assert status == 404
    assert b"There is no such group." in page


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A serve subprocess without a queue.yaml."""
    proc = ServeProcess("console_app:app", tmp_path_factory.mktemp("bare") / "serve.log")
    try:
        yield proc.wait_ready("/ran")
    finally:
        proc.stop()


def test_without_a_queue_yaml_the_settings_shown_are_said_to_be_app_engines_defaults(browser, bare_server, shots):
    console = Console(browser, bare_server, shots, "defaults")
    console.enqueue("record", console.key("defaults"), countdown=3600)

    console.open("/")

    assert "queue.yaml settings" not in console.driver.find_element(By.TAG_NAME, "thead").text.lower()
    assert "App Engine's defaults (no queue.yaml):" in console.row("default").text
    console.follow("default")
    summary = console.driver.find_element(By.CSS_SELECTOR, ".summary").text
    assert summary.endswith("(App Engine's defaults: no queue.yaml)"), summary


def test_a_handle_shows_its_function_times_attempts_result_and_the_callback_that_follows_it(console):
    key = console.key("handle")
    made = console.server.post(f"/handle?key={key}")
    console.server.wait_for(lambda: console.ran(f"noted-{key.upper()}") == 1, "the handle and its callback to run")

    console.server.wait_for(
        lambda: "succeeded" in console.open(f"/handles/run/{made['then']}").text(), "the callback to be recorded"
    )
    console.open(f"/handles/run/{made['id']}")
    console.shoot("handle")

    assert console.heading() == f"Handle {made['id']}"
    facts = console.driver.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "console_app.child" in facts and "succeeded" in facts
    assert "Attempts\n1" in facts
    assert console.driver.find_element(By.CSS_SELECTOR, "pre.result").text == repr(key.upper())
    times = console.driver.find_elements(By.CSS_SELECTOR, "dl.facts time[datetime]")
    assert len(times) == 3 and all(t.text.endswith(" UTC") for t in times)  # created, started, finished
    local = console.driver.find_elements(By.CSS_SELECTOR, "dl.facts .local-time")
    assert len(local) == (3 if console.driver.javascript else 0)  # the browser's zone, beside UTC, with JS
    if local:
        hour, minute, local_text = (int(times[0].text[:2]) + 9) % 24, times[0].text[3:5], local[0].text
        assert "GMT+9" in local_text or "JST" in local_text, local_text
        assert f"{hour:02d}:{minute}" in local_text or f"{hour % 12 or 12}:{minute}" in local_text, local_text

    console.open(f"/handles/run/{made['then']}")  # (listed as "Then" too, when added before the run ended)
    assert console.heading() == f"Handle {made['then']}"
    facts = console.driver.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "console_app.note" in facts and f"Follows\n{made['id']}" in facts
    console.follow(made["id"])
    assert console.heading() == f"Handle {made['id']}"


def test_a_failed_handle_shows_the_end_of_its_traceback_and_links_to_its_group(console):
    key = console.key("handle-fails")
    made = console.server.post(f"/group?key={key}&n=2&fail=1")
    console.server.wait_for(lambda: console.ran(f"{key}-1") == 1, "the failing child to run")

    console.server.wait_for(
        lambda: "failed" in console.open(f"/handles/run/{made['id']}.1").text(), "the child to be recorded failed"
    )
    console.shoot("failed-handle")
    assert console.driver.find_element(By.CSS_SELECTOR, "p.error").text == f"PermanentTaskFailure: child {key}-1! fails"
    trace = console.driver.find_element(By.CSS_SELECTOR, "pre.traceback").text
    assert trace.startswith("Traceback") or "\n" in trace
    assert trace.rstrip().endswith(f"PermanentTaskFailure: child {key}-1! fails")
    console.follow(made["id"])
    assert console.heading() == f"Group {made['id']}"
    console.follow(f"{made['id']}.0")
    assert console.heading() == f"Handle {made['id']}.0"


def test_runs_filter_by_function_queue_and_status_and_hide_taskutils_own_steps_unless_asked(console):
    from selenium.webdriver.support.ui import Select

    key = console.key("filtered")
    group = console.server.post(f"/group?key={key}&n=2")["id"]
    bad_name = console.enqueue("fail", key, queue="failing")
    console.server.wait_for(lambda: console.ran(key) == 1 and console.ran(f"{key}-1") == 1, "the runs")
    console.server.wait_for(lambda: "succeeded" in console.open(f"/handles/{group}").text(), "the group to finish")
    console.server.wait_for(lambda: console.open("/runs").has_row(bad_name), "the runs to be listed")

    assert "console_app.child" in console.text()
    assert "taskutils.results_run.complete_node" not in console.text()  # the group's fan-in: hidden
    Select(console.driver.find_element(By.NAME, "status")).select_by_value("failed")
    Select(console.driver.find_element(By.NAME, "queue")).select_by_value("failing")
    console.press("Filter")
    console.shoot("runs-filtered")
    rows = console.driver.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert rows and all("failing" in r.text and "console_app.fail" in r.text for r in rows)
    assert console.has_row(bad_name)

    console.open("/runs?function=console_app.child")
    functions = console.driver.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(4)")
    assert {cell.text for cell in functions} == {"console_app.child"}
    console.open("/runs")
    console.driver.find_element(By.NAME, "internal").click()
    console.press("Filter")
    assert "taskutils.results_run.complete_node" in console.text()


def test_each_queue_counts_its_recent_failures_and_retry_failed_tasks_runs_them_again(console):
    keys = [console.key(f"bulk-{i}") for i in range(2)]
    names = [console.enqueue("fail", key, queue="failing") for key in keys]
    console.server.wait_for(lambda: all(console.ran(key) == 1 for key in keys), "both tasks to fail once")
    console.server.wait_for(
        lambda: all(console.open("/queues/failing").has_row(name) for name in names), "both to be listed"
    )

    console.open("/")
    assert int(console.row("failing").find_element(By.CSS_SELECTOR, ".failed-recently").text) >= 2
    assert console.row("parked").find_element(By.CSS_SELECTOR, ".failed-recently").text == "0"
    console.open("/queues/failing")
    assert " failed recently" in console.driver.find_element(By.CSS_SELECTOR, ".summary").text
    [button] = [b for b in console.driver.find_elements(By.TAG_NAME, "button") if b.text.startswith("Retry failed")]
    label = button.text

    console.press(label)

    count = label.split("(")[1].rstrip(")")
    assert console.notice() == f"{count} failed tasks of queue failing will run again now."
    # min_backoff_seconds is 600: only the button makes them run again this soon
    console.server.wait_for(lambda: all(console.ran(key) == 2 for key in keys), "both to run again")
