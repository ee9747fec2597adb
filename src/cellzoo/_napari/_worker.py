"""Run a cellzoo job generator behind a widget: thread, progress bar, Cancel, error notifications.

Every widget goes through :func:`start_job`::

    self._job = start_job(
        lambda cancel: segment_iter(model, image, cancel=cancel),
        description="Segmenting",
        on_event=self._on_event,          # main thread, each yielded event
        on_returned=self._apply_result,   # main thread, the job's return value
        on_finished=self._job_done,       # main thread, always (success, error or cancel)
    )
    ...
    self._job.cancel()                    # from the Cancel button

The job factory receives the :class:`~cellzoo.types.CancelToken` and must return the
engine generator. The generator runs in a napari/superqt thread; it never touches layers:
results are applied in ``on_returned`` on the main thread. :class:`~cellzoo.types.Progress`
events drive a ``napari.utils.progress`` bar in the activity dock. User errors
(``ValueError``/``FileNotFoundError``/``OSError``) become a napari error notification with
their message; anything else is shown with its type and logged with its traceback.
A cancelled job shows an info notification and calls ``on_cancelled`` instead of ``on_returned``.

With ``CELLZOO_SYNC_WORKERS=1`` the job runs in the calling thread (same callbacks, same
order): deterministic widget tests without waiting on threads.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Generator
from typing import Any

from cellzoo.types import CancelToken, Cancelled, Progress

log = logging.getLogger(__name__)


def block_triton_after_gl() -> None:
    """Keep torch from importing triton inside napari.

    Building a torch optimizer imports ``torch._dynamo``, which imports triton when installed. triton's
    native library bundles LLVM; once napari has an OpenGL context on Mesa (llvmpipe, radeonsi), which
    loaded its own LLVM, that import segfaults the whole process (reproduced under Xvfb). cellzoo never
    uses ``torch.compile``, so inside napari torch simply runs as if triton were not installed.
    """
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError


block_triton_after_gl()

#: Exceptions whose message is meant for the user as it is (the engine's convention).
USER_ERRORS = (ValueError, FileNotFoundError, OSError, KeyError)

JobFactory = Callable[[CancelToken], Generator[Any, Any, Any]]


def sync_workers() -> bool:
    """True when jobs must run in the calling thread (``CELLZOO_SYNC_WORKERS=1``; tests)."""
    return os.environ.get("CELLZOO_SYNC_WORKERS", "0").strip().lower() in ("1", "true", "yes")


class _CancelledMarker:
    """Returned by the thread when the job was cancelled, so cancellation never looks like an error."""


_CANCELLED = _CancelledMarker()


def _drive(factory: JobFactory, token: CancelToken, cooperative: bool = False):
    """Wrap the engine generator: stop it between events once cancelled, turn Cancelled into a marker.

    ``cooperative``: leave stopping to the job itself (e.g. training finishes the step and returns
    its best checkpoint so far instead of being cut off at the next event).
    """
    gen = factory(token)
    try:
        while True:
            if not cooperative:
                token.raise_if_cancelled()
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield event
    except Cancelled:
        return _CANCELLED
    finally:
        # closing runs the job's own finally blocks (temp-file cleanup) if it stopped early
        gen.close()


def error_message(exc: BaseException, description: str) -> str:
    """A one-line message for the notification: the engine's own text for user errors."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    if isinstance(exc, USER_ERRORS):
        return f"{description} failed: {text}"
    return f"{description} failed with an unexpected {type(exc).__name__}: {text}"


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class Job:
    """Handle on one running job: ``cancel()``, ``running``, ``state`` and the last ``error``."""

    def __init__(self, description: str, token: CancelToken) -> None:
        self.description = description
        self.token = token
        self.state = "running"  # running | done | error | cancelled
        self.error: BaseException | None = None
        self.result: Any = None
        self.worker = None  # superqt GeneratorWorker in threaded mode
        self._pbar = None
        self._finished = False

    @property
    def running(self) -> bool:
        """True until every callback but ``on_finished`` has run (the outcome is in ``state``)."""
        return not self._finished

    def cancel(self) -> None:
        """Ask the job to stop at its next check; callbacks still arrive (``on_cancelled``, ``on_finished``)."""
        self.token.cancel()

    # --------------------------------------------------------------- progress bar (main thread)
    def _progress(self, event: Progress) -> None:
        # a local reference: updating the bar lets Qt process events, and a queued `finished`
        # may close it (setting self._pbar to None) in the middle of this update
        pbar = self._pbar
        if pbar is None:
            return
        total = max(int(event.total), 0)
        if pbar.total != total:
            pbar.total = total
        pbar.n = min(int(event.done), total) if total else int(event.done)
        label = f"{self.description}: {event.stage}"
        if event.message:
            label += f" ({event.message})"
        pbar.set_description(label)
        pbar.refresh()

    def _close_progress(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None


def start_job(
    factory: JobFactory,
    *,
    description: str,
    on_event: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[Job], None] | None = None,
    token: CancelToken | None = None,
    show_progress: bool = True,
    cooperative_cancel: bool = False,
) -> Job:
    """Start ``factory(token)`` (an engine generator) in a thread and return its :class:`Job`.

    All callbacks run on the main thread. ``on_error`` is called after the error notification.
    ``on_finished(job)`` is called last in every case, so widgets re-enable their Run button there.
    ``cooperative_cancel``: the job checks the token itself and may still return a (partial) result
    after a cancel, which then goes to ``on_returned``; by default the job is stopped at its next event.
    """
    token = token or CancelToken()
    job = Job(description, token)
    if show_progress:
        from napari.utils import progress

        job._pbar = progress(total=0, desc=description)

    def handle_event(event: Any) -> None:
        # Events queued before a cancel (or the outcome) can arrive after it; they are stale and must
        # not overwrite the "cancelled" state a widget already shows.
        if job.state != "running" or (token.cancelled and not cooperative_cancel):
            return
        if isinstance(event, Progress):
            job._progress(event)
        if on_event is not None:
            on_event(event)

    def handle_returned(value: Any) -> None:
        if value is _CANCELLED:
            job.state = "cancelled"
            notify_info(f"{description} cancelled.")
            if on_cancelled is not None:
                on_cancelled()
            return
        job.result = value
        try:
            if on_returned is not None:
                on_returned(value)
        except Exception as exc:  # applying the result to layers failed: same path as a job error
            handle_error(exc)
            return
        job.state = "done"

    def handle_error(exc: BaseException) -> None:
        job.state = "error"
        job.error = exc
        if not isinstance(exc, USER_ERRORS):
            log.error("%s failed", description, exc_info=(type(exc), exc, exc.__traceback__))
        notify_error(error_message(exc, description))
        if on_error is not None:
            on_error(exc)

    def handle_finished() -> None:
        job._close_progress()
        if job.state == "running":  # finished without returned/errored (worker.quit())
            job.state = "cancelled"
        job._finished = True
        if on_finished is not None:
            on_finished(job)

    if sync_workers():
        gen = _drive(factory, token, cooperative_cancel)
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    handle_returned(stop.value)
                    break
                handle_event(event)
        except Exception as exc:
            handle_error(exc)
        finally:
            handle_finished()
        return job

    # superqt's worker, not napari's subclass: napari's relays every error as a traceback
    # notification; ours shows the engine's message instead (see handle_error).
    from superqt.utils import GeneratorWorker

    worker = GeneratorWorker(_drive, factory, token, cooperative_cancel)
    worker.yielded.connect(handle_event)
    worker.returned.connect(handle_returned)
    worker.errored.connect(handle_error)
    worker.finished.connect(handle_finished)
    job.worker = worker
    worker.start()
    return job


# ----------------------------------------------------------------------------- field validation
INVALID_STYLE = "border: 1px solid #e0433b;"


def mark_field(widget, reason: str | None) -> bool:
    """Mark a Qt field invalid (red border, tooltip says why) or clear the mark; return True when valid.

    Widgets validate every field on change and disable Run while any field is invalid.
    """
    if not hasattr(widget, "_cellzoo_tooltip"):
        widget._cellzoo_tooltip = widget.toolTip()
    if reason:
        widget.setStyleSheet(INVALID_STYLE)
        widget.setToolTip(reason)
        return False
    widget.setStyleSheet("")
    widget.setToolTip(widget._cellzoo_tooltip)
    return True
