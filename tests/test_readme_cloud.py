"""The README's other code examples, run as written on the cloud backend under ``cloud_task_testbed``.

The README's ``@task`` block, its results and fan-in lines, and its control options (with
``debounce`` and ``concurrency`` from docs/controls.md, and a periodic job fired as App
Engine's cron service fires it), each against the real Cloud Tasks
and Datastore emulators: every task added is drained through ``taskutils.app`` in process.
The three mountings have their own tests in test_readme_apps.py.
"""

from __future__ import annotations

import pytest
import webtest

import taskutils
from taskutils import task
from taskutils.controls import jobs as declared

import tasklib

# What ran: tasklib.ran (emptied before each test), reached through its module so that a
# closure, pickled by value, appends to this process's list and not to a copy.
ran = tasklib.ran


# The README's first block, with bodies that say they ran.


@task
def send_report(account_id):
    ran.append(("send_report", account_id))


@task(queue="reports", countdown=5)
def rebuild(day):
    ran.append(("rebuild", day))


def somefunction(a, b):
    ran.append(("somefunction", a, b))


def notify_all(users, render):
    @task
    def notify(user):
        tasklib.ran.append(("notify", user, render(user)))

    for user in users:
        notify(user)


def test_the_readmes_task_block_enqueues_and_runs_on_the_cloud_backend(cloud_task_testbed):
    added = send_report(42)
    task(somefunction, queue="myqueue")(1, 2)
    rebuild.options(countdown=60)("monday")
    assert len(send_report.map([1, 2, 3])) == 3
    send_report.__wrapped__(42)
    notify_all(["ada", "bob"], str.upper)

    assert added.name and added.url == "/_ah/task/test_readme_cloud/send_report"
    waiting = {t.app_engine_http_request.relative_uri for t in cloud_task_testbed.tasks()}
    assert "/_ah/task/test_readme_cloud/notify_all/notify" in waiting
    assert {"default", "reports", "myqueue"} <= set(cloud_task_testbed.queue_names())
    assert ran == [("send_report", 42)]  # __wrapped__ ran inline; the others wait
    assert cloud_task_testbed.drain() == 8
    assert sorted(ran, key=repr) == sorted(
        [
            ("send_report", 42),
            ("send_report", 42),
            ("somefunction", 1, 2),
            ("rebuild", "monday"),
            ("send_report", 1),
            ("send_report", 2),
            ("send_report", 3),
            ("notify", "ada", "ADA"),
            ("notify", "bob", "BOB"),
        ],
        key=repr,
    )


# Results and fan-in.


@task
def resize(image_id):
    return image_id * 10


def total(sizes):
    ran.append(("total", sizes))


def test_the_readmes_results_lines_run_on_the_cloud_backend(cloud_task_testbed):
    h = resize.submit(4)
    assert taskutils.TaskHandle.get(h.id).status == "pending"

    g = resize.submit_map([1, 2, 3])
    g.then(total)
    cloud_task_testbed.drain()

    assert taskutils.TaskHandle.get(h.id).status == "succeeded"
    assert h.result(timeout=30) == 40
    assert g.progress == 1.0
    assert g.results() == [10, 20, 30]
    assert ran == [("total", [10, 20, 30])]


# Control options, and a periodic job.


@task(unique=True)
def rebuild_report(account_id):
    ran.append(("rebuild_report", account_id))


@task(exclusive=lambda account_id, *_: f"account-{account_id}")
def charge(account_id, amount):
    ran.append(("charge", account_id, amount))


@task(debounce=30, key=lambda feed_id, **_: feed_id)
def refresh_feed(feed_id, reason=""):
    ran.append(("refresh_feed", feed_id))


@task(concurrency=4)
def render(page):
    ran.append(("render", page))


@task(rate="10/m")
def call_partner_api(order_id):
    ran.append(("call_partner_api", order_id))


@taskutils.periodic("every 5 minutes")
def sweep_sessions():
    ran.append(("sweep_sessions",))


@pytest.fixture
def only_this_periodic_job():
    saved = dict(declared._jobs)
    declared._jobs.clear()
    declared._jobs[sweep_sessions.url_path] = saved[sweep_sessions.url_path]
    yield
    declared._jobs.clear()
    declared._jobs.update(saved)


def test_the_readmes_control_options_hold_on_the_cloud_backend(cloud_task_testbed):
    rebuild_report(7)
    rebuild_report(7)
    charge(7, 100)
    charge(7, 200)
    for order_id in range(3):
        call_partner_api(order_id)
    refresh_feed("news", reason="a")
    refresh_feed("news", reason="b")
    render(1)

    requests = cloud_task_testbed.drain()

    assert requests > 8  # three calls at once spend 10/m: some were put back on Cloud Tasks and run later

    assert sorted(ran, key=repr) == sorted(
        [
            ("rebuild_report", 7),
            ("charge", 7, 100),
            ("charge", 7, 200),
            ("call_partner_api", 0),
            ("call_partner_api", 1),
            ("call_partner_api", 2),
            ("refresh_feed", "news"),
            ("render", 1),
        ],
        key=repr,
    )


def test_a_periodic_job_fired_by_app_engines_cron_runs_once_per_slot_on_the_cloud_backend(
    cloud_task_testbed, only_this_periodic_job
):
    app = webtest.TestApp(taskutils.mount(lambda environ, start_response: []))

    app.get("/cron/taskutils-periodic", headers={"X-Appengine-Cron": "true"})
    app.get("/cron/taskutils-periodic", headers={"X-Appengine-Cron": "true"})
    cloud_task_testbed.drain()

    assert ran == [("sweep_sessions",)]
