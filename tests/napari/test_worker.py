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
    # ready at once: the callbacks ran inside cancel(), before the thread noticed
    assert finished == [job] and not job.running
    assert job.state == "cancelled" and cancelled == [True] and returned == []
    qtbot.waitUntil(lambda: job.thread_done, timeout=10_000)  # the thread winds down by itself
    assert len(events) < 1000 and cleanup == ["closed"] and returned == [] and finished == [job]
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
    assert notifications[0][0] == "error"
    assert notifications[0][1].startswith("Segment failed with an unexpected ZeroDivisionError: division by zero.")
    assert "report it" in notifications[0][1]


def test_mark_field_sets_and_restores_tooltip(qtbot):
    from qtpy.QtWidgets import QLineEdit

    field = QLineEdit()
    qtbot.addWidget(field)
    field.setToolTip("learning rate")
    assert _worker.mark_field(field, "must be > 0") is False
    assert field.toolTip() == "must be > 0" and "border" in field.styleSheet()
    assert _worker.mark_field(field, None) is True
    assert field.toolTip() == "learning rate" and field.styleSheet() == ""


def failing_job(exc, events_before=0):
    def factory(cancel):
        def gen():
            for i in range(events_before):
                yield Progress("items", i + 1, events_before + 1)
            raise exc

        return gen()

    return factory


class PluginTrouble(Exception):
    """An exception type nobody anticipated."""


FAILURES = [
    (RuntimeError("boom in a torch kernel"), "unexpected RuntimeError: boom in a torch kernel"),
    (MemoryError(), "ran out of memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory"),
    (KeyboardInterrupt(), "was interrupted"),
    (PluginTrouble("odd"), "unexpected PluginTrouble: odd"),
    (OSError("disk full"), "failed: disk full"),
]


@pytest.mark.parametrize("sync", ["0", "1"])
@pytest.mark.parametrize("exc,expected", FAILURES, ids=[type(e).__name__ + str(i) for i, (e, _) in
                                                        enumerate(FAILURES)])
def test_every_exception_type_ends_the_job_with_a_notification(qtbot, monkeypatch, notifications, sync,
                                                               exc, expected):
    """superqt swallows a RuntimeError (neither `errored` nor `finished`) and a BaseException kills its
    thread silently: the job must still end with on_error and on_finished."""
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", sync)
    errors, finished = [], []
    job = start_job(failing_job(exc, events_before=2), description="Counting", on_error=errors.append,
                    on_finished=finished.append, show_progress=False)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert finished == [job] and job.state == "error" and errors == [exc] and not job.running
    assert len(notifications) == 1 and notifications[0][0] == "error" and expected in notifications[0][1]
    assert job.message == notifications[0][1]


def test_out_of_memory_message_carries_the_widgets_advice(monkeypatch, notifications):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "1")
    start_job(failing_job(torch.OutOfMemoryError("CUDA error: out of memory")), description="Segmenting",
              show_progress=False, oom_advice="choose a tile size below 512 px or the CPU")
    assert notifications == [("error", "Segmenting ran out of memory: choose a tile size below 512 px or the "
                                       "CPU. (OutOfMemoryError: CUDA error: out of memory)")]


def test_a_returned_exception_object_is_a_result_not_an_error(qtbot, monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    results, finished = [], []

    def factory(cancel):
        def gen():
            yield Progress("items", 1, 1)
            return RuntimeError("a value, not a failure")

        return gen()

    job = start_job(factory, description="Counting", on_returned=results.append, on_finished=finished.append,
                    show_progress=False)
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert job.state == "done" and isinstance(results[0], RuntimeError) and notifications == []


def test_cooperative_cancel_waits_for_the_partial_result_within_its_grace(qtbot, monkeypatch, notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    results, finished = [], []

    def factory(cancel):
        def gen():
            while not cancel.cancelled:
                time.sleep(0.01)
                yield Progress("steps", 0, 0)
            return "best so far"

        return gen()

    job = start_job(factory, description="Training", on_returned=results.append, on_finished=finished.append,
                    cooperative_cancel=True, cancel_grace_s=5.0, show_progress=False)
    qtbot.wait(100)
    job.cancel()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    assert results == ["best so far"] and job.state == "done"


def test_cooperative_cancel_past_its_grace_is_ready_and_hands_over_the_late_result(qtbot, monkeypatch,
                                                                                   notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    results, late, cancelled, finished = [], [], [], []
    release = threading.Event()

    def factory(cancel):
        def gen():
            yield Progress("steps", 0, 0)
            release.wait(10)  # a long step that does not look at the token
            return "saved after the step"

        return gen()

    job = start_job(factory, description="Training", on_returned=results.append, on_finished=finished.append,
                    on_cancelled=lambda: cancelled.append(True), on_late_returned=late.append,
                    cooperative_cancel=True, cancel_grace_s=0.2, show_progress=False)
    qtbot.wait(50)
    clicked = time.perf_counter()
    job.cancel()
    qtbot.waitUntil(lambda: bool(finished), timeout=5_000)
    assert time.perf_counter() - clicked < 1.0
    assert job.state == "cancelled" and cancelled == [True] and results == [] and not job.thread_done
    release.set()
    qtbot.waitUntil(lambda: job.thread_done, timeout=10_000)
    assert late == ["saved after the step"] and results == [] and finished == [job]


def test_a_new_job_while_the_cancelled_thread_winds_down_gets_only_its_own_events(qtbot, monkeypatch,
                                                                                  notifications):
    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    release = threading.Event()
    first_events, first_results, second_results = [], [], []

    def slow(cancel):
        def gen():
            yield Progress("tile", 0, 1)
            release.wait(10)  # a long tile: the token is seen only afterwards
            yield Progress("tile", 1, 1)
            return "old"

        return gen()

    first = start_job(slow, description="Segmenting", on_event=first_events.append,
                      on_returned=first_results.append, show_progress=False)
    qtbot.waitUntil(lambda: len(first_events) == 1, timeout=5_000)
    first.cancel()
    assert not first.running
    second = start_job(counting_job(3, []), description="Segmenting", on_returned=second_results.append,
                       show_progress=False)
    qtbot.waitUntil(lambda: not second.running, timeout=10_000)
    release.set()
    qtbot.waitUntil(lambda: first.thread_done, timeout=10_000)
    assert second.state == "done" and second_results[0]["sum"] == 3
    assert first_results == [] and len(first_events) == 1 and first.state == "cancelled"


def test_an_event_whose_progress_refresh_delivers_the_outcome_is_dropped(qtbot, monkeypatch, notifications):
    """napari's progress bar processes Qt events while it refreshes, so the result can be handled inside
    the handling of an earlier event; that event must not overwrite what the result showed."""
    from qtpy.QtWidgets import QApplication

    monkeypatch.setenv("CELLZOO_SYNC_WORKERS", "0")
    original = _worker.Job._progress

    def refresh_processing_events(self, event):
        original(self, event)
        time.sleep(0.2)  # the thread has returned meanwhile: its signals are queued
        QApplication.processEvents()

    monkeypatch.setattr(_worker.Job, "_progress", refresh_processing_events)
    shown = []
    job = start_job(counting_job(1, []), description="Counting",
                    on_event=lambda e: shown.append("progress"), on_returned=lambda r: shown.append("result"),
                    show_progress=False)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    qtbot.wait(50)
    assert shown == ["result"] and job.state == "done"
