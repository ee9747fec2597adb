"""Run/Cancel buttons, a progress bar and a status line that follow one widget's jobs.

Each widget keeps its own buttons and status label (and lays them out); :class:`JobPanel` adds the
progress bar and owns their state while a job runs::

    self.jobs = JobPanel(self.run_button, self.cancel_button, self.status_label)
    layout.addWidget(self.jobs.progress_bar)
    ...
    self._job = self.jobs.start(factory, description="Segmenting", status="Segmenting …",
                                on_returned=self._apply, on_finished=lambda job: self.validate())
    ...
    self.jobs.cancel()   # Cancel button

Start: Run disabled, Cancel enabled, the status shows ``status``, the bar is busy (indeterminate until
a :class:`~cellzoo.types.Progress` event with a total arrives). End: Cancel disabled, Run enabled (the
widget's ``on_finished`` may disable it again, e.g. when a field became invalid), and the status line
keeps the outcome: the widget's own text from ``on_returned``, the error notification's text, or
"Cancelled". Events of a job that has ended (or a previous job) never reach the status or the bar.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from cellzoo.types import Progress

from ._worker import Job, JobFactory, error_message, start_job


class JobPanel:
    """The job-facing controls of one widget: see the module docstring."""

    def __init__(self, run_button: QPushButton, cancel_button: QPushButton, status_label: QLabel) -> None:
        self.run_button = run_button
        self.cancel_button = cancel_button
        self.status_label = status_label
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("cellzoo_progress")
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setToolTip("Progress of the running job")
        self._idle("ready")
        self.job: Job | None = None
        self.cancel_button.setEnabled(False)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _idle(self, word: str, full: bool = False) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if full else 0)
        self.progress_bar.setFormat(word)

    def show_progress(self, event: Progress) -> None:
        """Bar: value/total, or busy (indeterminate) while the total is unknown."""
        total, done = int(event.total), int(event.done)
        label = event.stage + (f" ({event.message})" if event.message else "")
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(max(done, 0), total))
            self.progress_bar.setFormat(f"{label}: {min(done, total)} / {total}")
        else:
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat(label)

    # ------------------------------------------------------------------ jobs
    def start(self, factory: JobFactory, *, description: str, status: str = "",
              on_event: Callable[[Any], None] | None = None,
              on_returned: Callable[[Any], None] | None = None,
              on_cancelled: Callable[[], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              on_finished: Callable[[Job], None] | None = None,
              cancelled_text: str = "Cancelled.",
              **options: Any) -> Job:
        """Start a job through :func:`cellzoo._napari._worker.start_job` (same callbacks and options)."""
        self.set_status(status or f"{description} …")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the first Progress with a total
        self.progress_bar.setFormat(description)
        current: dict[str, Job] = {}

        def mine() -> bool:
            # before start_job returns (sync mode) the job is not stored yet; afterwards only its own
            return "job" not in current or current["job"] is self.job

        def event(value: Any) -> None:
            if not mine():
                return
            if isinstance(value, Progress):
                self.show_progress(value)
            if on_event is not None:
                on_event(value)

        def returned(value: Any) -> None:
            if on_returned is not None:
                on_returned(value)
            if mine():
                self._idle("done", full=True)

        def cancelled() -> None:
            if mine():
                self.set_status(cancelled_text)
                self._idle("cancelled")
            if on_cancelled is not None:
                on_cancelled()

        def failed(exc: BaseException) -> None:
            if mine():
                self.set_status(error_message(exc, description, options.get("oom_advice")))
                self._idle("failed")
            if on_error is not None:
                on_error(exc)

        def finished(job: Job) -> None:
            if mine():
                self.cancel_button.setEnabled(False)
                self.run_button.setEnabled(True)
            if on_finished is not None:
                on_finished(job)

        job = start_job(factory, description=description, on_event=event, on_returned=returned,
                        on_cancelled=cancelled, on_error=failed, on_finished=finished, **options)
        current["job"] = job
        self.job = job
        return job

    def cancel(self, status: str = "Cancelling …") -> None:
        """Cancel button: the widget is ready again at once (cooperative jobs: within their grace)."""
        job = self.job
        if job is None or not job.running:
            return
        self.set_status(status)
        self.cancel_button.setEnabled(False)
        job.cancel()
