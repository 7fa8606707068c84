"""The package's public names: ``import taskutils``."""

import subprocess
import sys

import taskutils


def test_every_public_name_is_listed_by_dir_and_importable():
    listed = dir(taskutils)

    assert {"TaskHandle", "GroupHandle", "set_progress", "console", "task", "mount"} <= set(listed)
    for name in taskutils.__all__:
        assert name in listed, name
        assert getattr(taskutils, name) is not None


def test_dir_lists_the_lazy_names_before_they_are_imported():
    code = (
        "import sys, taskutils; "
        "assert 'taskutils.results' not in sys.modules; "
        "names = dir(taskutils); "
        "assert 'taskutils.results' not in sys.modules; "
        "print(' '.join(n for n in ('TaskHandle', 'GroupHandle', 'set_progress', 'console') if n in names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TaskHandle", "GroupHandle", "set_progress", "console"]
