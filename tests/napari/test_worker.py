"""The worker glue every widget uses: threaded and synchronous runs, cancel, errors → notifications."""
from __future__ import annotations

import threading
import time

import pytest

from cellzoo._napari import _worker
from cellzoo._napari._worker import start_job
from cellzoo.types import Progress


def counting_job(n, cleanup_log, delay=0.0):
    def factory(cancel):
        def gen():
            try:
                for i in range(n):
                    cancel.raise_if_cancelled()
                    time.sleep(delay)
                    yield Progress("items", i + 1, n)
                return {"sum": sum(range(n)), "thread": threading.current_thread().name}
            finally:
                cleanup_log.append("closed")

        return gen()

    return factory


@pytest.fixture
def notifications(monkeypatch):
    shown = []
    monkeypatch.setattr(_worker, "notify_error", lambda m: shown.append(("error", m)))
    monkeypatch.setattr(_worker, "notify_info", lambda m: shown.append(("info", m)))
    return shown


def test_threaded_job_delivers_events_then_result_on_main_thread(qtbot, monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    events, results, finished, cleanup = [], [], [], []
    main = threading.current_thread().name
    job = start_job(counting_job(5, cleanup), description="Counting",
                    on_event=lambda e: events.append((e.done, threading.current_thread().name)),
                    on_returned=results.append, on_finished=finished.append)
    assert job.worker is not None
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert [d for d, _ in events] == [1, 2, 3, 4, 5]
    assert {t for _, t in events} == {main}  # callbacks are on the main thread
    assert results[0]["sum"] == 10 and results[0]["thread"] != main  # the job ran elsewhere
    assert job.state == "done" and finished == [job] and cleanup == ["closed"]
    assert notifications == []


def test_cancel_stops_threaded_job_and_calls_on_cancelled(qtbot, monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    events, returned, cancelled, finished, cleanup = [], [], [], [], []
    job = start_job(counting_job(1000, cleanup, delay=0.01), description="Counting",
                    on_event=events.append, on_returned=returned.append,
                    on_cancelled=lambda: cancelled.append(True), on_finished=finished.append)
    qtbot.waitUntil(lambda: len(events) >= 3, timeout=10_000)
    job.cancel()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert job.state == "cancelled" and cancelled == [True] and returned == []
    assert len(events) < 1000 and cleanup == ["closed"]
    assert notifications == [("info", "Counting cancelled.")]


def test_sync_mode_runs_in_calling_thread(monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    events, results, cleanup = [], [], []
    job = start_job(counting_job(3, cleanup), description="Counting", on_event=events.append,
                    on_returned=results.append, show_progress=False)
    assert job.worker is None and job.state == "done"
    assert [e.done for e in events] == [1, 2, 3]
    assert results[0]["thread"] == threading.current_thread().name


@pytest.mark.parametrize("sync", ["0", "1"])
def test_user_error_becomes_notification_with_engine_message(qtbot, monkeypatch, notifications, sync):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", sync)
    errors, finished = [], []

    def factory(cancel):
        def gen():
            yield Progress("images", 0, 2)
            raise ValueError("ground truth and prediction differ in shape (10, 10) vs (12, 12); "
                             "pick matching layers")

        return gen()

    job = start_job(factory, description="Evaluation", on_error=errors.append,
                    on_finished=finished.append, show_progress=False)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert job.state == "error" and isinstance(errors[0], ValueError)
    assert notifications == [("error", "Evaluation failed: ground truth and prediction differ in "
                                       "shape (10, 10) vs (12, 12); pick matching layers")]


def test_error_while_applying_result_is_reported(monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")

    def boom(_):
        raise ZeroDivisionError("division by zero")

    job = start_job(counting_job(1, []), description="Segment", on_returned=boom, show_progress=False)
    assert job.state == "error"
    assert notifications == [("error", "Segment failed with an unexpected ZeroDivisionError: division by zero")]


def test_mark_field_sets_and_restores_tooltip(qtbot):
    from qtpy.QtWidgets import QLineEdit

    field = QLineEdit()
    qtbot.addWidget(field)
    field.setToolTip("learning rate")
    assert _worker.mark_field(field, "must be > 0") is False
    assert field.toolTip() == "must be > 0" and "border" in field.styleSheet()
    assert _worker.mark_field(field, None) is True
    assert field.toolTip() == "learning rate" and field.styleSheet() == ""
