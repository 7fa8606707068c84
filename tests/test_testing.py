import textwrap

import pytest
from google.appengine.api import taskqueue

from taskutils.exc import TaskFailedError
from taskutils.testing import TaskTestbed

import tasklib


def test_drain_runs_tasks_and_the_tasks_they_enqueue_until_the_queue_is_empty(task_testbed):
    tasklib.enqueue_record(1)
    tasklib.enqueue_record(2)

    assert task_testbed.drain() == 4
    assert task_testbed.tasks() == []
    assert sorted(map(str, tasklib.ran)) == sorted(
        map(str, [("enqueue_record", 1), ("enqueue_record", 2), ((1,), {}), ((2,), {})])
    )


def test_drain_reraises_the_first_task_failure(task_testbed):
    tasklib.crash()

    with pytest.raises(ValueError, match="boom"):
        task_testbed.drain()


def test_drain_reports_a_requested_retry_as_a_failure(task_testbed):
    tasklib.ask_for_retry()

    with pytest.raises(Exception, match="later"):
        task_testbed.drain()


def test_drain_lets_permanent_failures_go_like_the_queue_does(task_testbed):
    tasklib.fail_permanently()

    assert task_testbed.drain() == 1
    assert task_testbed.tasks() == []


def test_drain_stops_a_task_that_enqueues_itself_forever(task_testbed, monkeypatch):
    monkeypatch.setattr("taskutils.testing.MAX_ROUNDS", 5)
    from taskutils import task

    @task
    def forever():
        forever()

    forever()
    with pytest.raises(TaskFailedError, match="5 rounds"):
        task_testbed.drain()


def test_a_testbed_with_a_queue_yaml_only_knows_its_queues(tmp_path):
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text(
        textwrap.dedent(
            """\
            queue:
            - name: reports
              rate: 5/s
            """
        )
    )

    with TaskTestbed(queue_yaml) as bed:
        tasklib.report("friday")
        assert bed.drain("reports") == 1
        with pytest.raises(taskqueue.UnknownQueueError):
            tasklib.record.options(queue="nope")()
    assert tasklib.ran == [("report", "friday")]
