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
events drive a ``napari.utils.progress`` bar in the activity dock (widgets also show their own, see
:mod:`cellzoo._napari._job_panel`). Every exception type ends in an error notification and
``on_error``: the thread boxes it (``_drive``) instead of letting it reach superqt, which swallows a
RuntimeError without any signal. User errors (``ValueError``/``FileNotFoundError``/``OSError``/
``KeyError``, a failed download) show their message; running out of memory says to use smaller tiles or
the CPU; anything else is shown with its type and logged with its traceback.
Cancel returns the widget to ready at once (``on_cancelled`` + ``on_finished``, an info notification);
the thread stops at its next check and whatever it still yields or returns is ignored. Cooperative jobs
(fine-tuning keeps its best epoch) get a short grace to return their result first.

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

#: How long a cooperative job (one that returns a partial result after Cancel, e.g. fine-tuning) may
#: take to stop before the widget goes back to ready without it (its late result still arrives).
COOPERATIVE_CANCEL_GRACE_S = 0.6


def sync_workers() -> bool:
    """True when jobs must run in the calling thread (``CELLZOO_SYNC_WORKERS=1``; tests)."""
    return os.environ.get("CELLZOO_SYNC_WORKERS", "0").strip().lower() in ("1", "true", "yes")


def job_processes() -> bool:
    """True when long jobs that support it (fine-tuning) run in a child process (default; see
    :mod:`cellzoo._process`); ``CELLZOO_JOB_PROCESS=0`` keeps them in the job thread, as does sync mode."""
    if sync_workers():
        return False
    return os.environ.get("CELLZOO_JOB_PROCESS", "1").strip().lower() not in ("0", "false", "no")


class _CancelledMarker:
    """Returned by the thread when the job was cancelled, so cancellation never looks like an error."""


_CANCELLED = _CancelledMarker()


class _Returned:
    """The job's return value, boxed: superqt raises a returned Exception instance instead of emitting it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Failed:
    """The job's exception, boxed. The thread never lets an exception reach superqt: its
    ``GeneratorWorker.work`` *returns* a RuntimeError (then neither ``errored`` nor ``finished`` fires,
    and the widget would wait forever) and lets BaseExceptions kill the thread without a signal."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def gui_friendly_torch_threads() -> int:
    """Threads for a long torch job inside napari: all cores but one (at least one), so the GUI thread
    always has a core for repaints and plots instead of waiting for the job's compute threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _set_torch_threads(count: int | None) -> None:
    # per thread: the pool's threads are reused, so every job sets its own count
    if count and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(count))


def _drive(factory: JobFactory, token: CancelToken, cooperative: bool = False, torch_threads: int | None = None):
    """Wrap the engine generator: stop it between events once cancelled; end with exactly one marker.

    The generator's return value is ``_CANCELLED``, ``_Returned(value)`` or ``_Failed(exc)`` for any
    exception type (RuntimeError, MemoryError, KeyboardInterrupt, ...); it never raises.
    ``cooperative``: leave stopping to the job itself (e.g. training finishes the step and returns
    its best checkpoint so far instead of being cut off at the next event).
    """
    gen = None
    try:
        _set_torch_threads(torch_threads)
        gen = factory(token)
        while True:
            if not cooperative:
                token.raise_if_cancelled()
            try:
                event = next(gen)
            except StopIteration as stop:
                return _Returned(stop.value)
            yield event
    except Cancelled:
        return _CANCELLED
    except GeneratorExit:  # this wrapper itself is being closed: not a job failure
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the widget, see _Failed
        return _Failed(exc)
    finally:
        # closing runs the job's own finally blocks (temp-file cleanup) if it stopped early
        if gen is not None:
            try:
                gen.close()
            except BaseException:  # noqa: BLE001 - a failing cleanup must not hide the outcome
                log.exception("closing a job generator failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or a RuntimeError saying "out of memory" (CUDA, MPS)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    torch_oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if torch_oom is not None and isinstance(exc, torch_oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, USER_ERRORS):
        return True
    fetch_error = getattr(sys.modules.get("cellzoo.zoo.downloads"), "FetchError", None)
    return fetch_error is not None and isinstance(exc, fetch_error)  # its message says what to do


DEFAULT_OOM_ADVICE = ("use a smaller tile size (or batch size), or the CPU device, close other programs "
                      "and run again")


def error_message(exc: BaseException, description: str, oom_advice: str | None = None) -> str:
    """The notification text: what happened and what to do (the engine's own text for user errors)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    if is_out_of_memory(exc):
        first_line = text.splitlines()[0][:200] if text else type(exc).__name__
        return (f"{description} ran out of memory: {oom_advice or DEFAULT_OOM_ADVICE}. "
                f"({type(exc).__name__}: {first_line})")
    if _is_user_error(exc):
        return f"{description} failed: {text}"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return f"{description} was interrupted ({type(exc).__name__}); press Run to start it again."
    return (f"{description} failed with an unexpected {type(exc).__name__}: {text}. Check the inputs and run "
            "again; if it keeps failing, please report it with the traceback from the log.")


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class Job:
    """Handle on one job: ``cancel()``, ``running``, ``state`` and the last ``error``.

    ``running`` turns False once the widget may be used again (``on_finished`` has been called); the
    thread of a cancelled job may still be winding down then: its late events and result are ignored
    (cooperative jobs hand a late result to ``on_late_returned``). ``thread_done`` says when it ended.
    """

    def __init__(self, description: str, token: CancelToken) -> None:
        self.description = description
        self.token = token
        self.state = "running"  # running | done | error | cancelled
        self.error: BaseException | None = None
        self.message = ""  # the error notification's text, for the widget's status line
        self.result: Any = None
        self.worker = None  # superqt GeneratorWorker in threaded mode
        self.thread_done = False
        self._pbar = None
        self._finished = False
        self._on_cancel_request: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        """True until every callback but ``on_finished`` has run (the outcome is in ``state``)."""
        return not self._finished

    def cancel(self) -> None:
        """Stop the job. Threaded jobs go to ``cancelled`` at once (``on_cancelled``, ``on_finished``) while
        the thread stops at its next check; cooperative jobs get a short grace to return their result."""
        if self._finished:
            return
        self.token.cancel()
        if self._on_cancel_request is not None:
            self._on_cancel_request()

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
            pbar, self._pbar = self._pbar, None
            pbar.close()


def start_job(
    factory: JobFactory,
    *,
    description: str,
    on_event: Callable[[Any], None] | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_cancelled: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[Job], None] | None = None,
    on_late_returned: Callable[[Any], None] | None = None,
    token: CancelToken | None = None,
    show_progress: bool = True,
    cooperative_cancel: bool = False,
    cancel_grace_s: float = COOPERATIVE_CANCEL_GRACE_S,
    oom_advice: str | None = None,
    torch_threads: int | None = None,
) -> Job:
    """Start ``factory(token)`` (an engine generator) in a thread and return its :class:`Job`.

    All callbacks run on the main thread. Exactly one of ``on_returned``, ``on_error`` (after the error
    notification) or ``on_cancelled`` is called, then ``on_finished(job)``, in every case, so widgets
    re-enable their Run button there. Any exception type (also RuntimeError, MemoryError, CUDA out of
    memory, KeyboardInterrupt) ends in ``on_error``; ``oom_advice`` says what to do when memory ran out.
    An exception raised by ``on_returned`` (applying the result) is handled like a job error.
    ``cooperative_cancel``: the job checks the token itself and may still return a (partial) result
    after a cancel, which then goes to ``on_returned``; if it takes longer than ``cancel_grace_s`` the
    job is reported cancelled and the result, when it comes, goes to ``on_late_returned``. By default
    the job is reported cancelled at once and stopped at its next event.
    ``torch_threads``: torch's intra-op threads in the job's thread (threaded mode), e.g.
    :func:`gui_friendly_torch_threads` for training; by default the main thread's count.
    """
    token = token or CancelToken()
    job = Job(description, token)
    if show_progress:
        from napari.utils import progress

        job._pbar = progress(total=0, desc=description)

    def finish() -> None:
        job._close_progress()
        if job.state == "running":
            job.state = "cancelled"
        job._finished = True
        if on_finished is not None:
            on_finished(job)

    def settle_cancelled() -> None:
        job.state = "cancelled"
        notify_info(f"{description} cancelled.")
        try:
            if on_cancelled is not None:
                on_cancelled()
        finally:
            finish()

    def handle_event(event: Any) -> None:
        # Events queued before a cancel (or the outcome) can arrive after it; they are stale and must
        # not overwrite the state a widget already shows.
        if job._finished or (token.cancelled and not cooperative_cancel):
            return
        if isinstance(event, Progress):
            job._progress(event)
            # napari's bar processes Qt events while it refreshes: the outcome may have been handled
            # inside that call, and then this event is stale
            if job._finished or job.state != "running":
                return
        if on_event is not None:
            try:
                on_event(event)
            except Exception:  # noqa: BLE001 - a display hiccup must not end the job
                log.exception("%s: showing an event failed", description)

    def handle_error(exc: BaseException) -> None:
        job.state = "error"
        job.error = exc
        job.message = error_message(exc, description, oom_advice)
        if not _is_user_error(exc):
            log.error("%s failed", description, exc_info=(type(exc), exc, exc.__traceback__))
        try:
            notify_error(job.message)
            if on_error is not None:
                on_error(exc)
        except Exception:  # noqa: BLE001 - the widget must still become ready
            log.exception("%s: reporting an error failed", description)
        finally:
            finish()

    def handle_late(outcome: Any) -> None:
        """The thread of a job the widget already let go of has ended."""
        if isinstance(outcome, _Returned) and on_late_returned is not None:
            try:
                on_late_returned(outcome.value)
            except Exception as exc:  # noqa: BLE001
                log.exception("%s: applying a late result failed", description)
                notify_error(error_message(exc, description, oom_advice))
        elif isinstance(outcome, _Failed) and cooperative_cancel:
            # a cooperative job was still saving its partial result: the user must hear that it failed
            notify_error(error_message(outcome.error, description, oom_advice))

    def handle_outcome(outcome: Any) -> None:
        job.thread_done = True
        if job._finished:
            handle_late(outcome)
            return
        if outcome is _CANCELLED:
            settle_cancelled()
            return
        if isinstance(outcome, _Failed):
            handle_error(outcome.error)
            return
        value = outcome.value if isinstance(outcome, _Returned) else outcome
        job.result = value
        try:
            if on_returned is not None:
                on_returned(value)
        except BaseException as exc:  # noqa: BLE001 - applying the result to layers failed: a job error
            handle_error(exc)
            return
        job.state = "done"
        finish()

    def handle_worker_error(exc: BaseException) -> None:
        # only reachable if superqt itself fails around the job (the job's own errors arrive boxed)
        job.thread_done = True
        if not job._finished:
            handle_error(exc)

    if sync_workers():
        gen = _drive(factory, token, cooperative_cancel)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                handle_outcome(stop.value)
                break
            handle_event(event)
        return job

    # superqt's worker, not napari's subclass: napari's relays every error as a traceback
    # notification; ours shows the engine's message instead (see handle_error).
    from superqt.utils import GeneratorWorker

    if torch_threads is None and "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    worker = GeneratorWorker(_drive, factory, token, cooperative_cancel, torch_threads)
    worker.yielded.connect(handle_event)
    worker.returned.connect(handle_outcome)
    worker.errored.connect(handle_worker_error)
    job.worker = worker

    if cooperative_cancel:
        def on_cancel_request() -> None:
            from qtpy.QtCore import QTimer

            def give_up_waiting() -> None:
                if not job._finished:
                    settle_cancelled()

            QTimer.singleShot(max(int(cancel_grace_s * 1000), 0), give_up_waiting)
    else:
        def on_cancel_request() -> None:
            settle_cancelled()
    job._on_cancel_request = on_cancel_request
    worker.start()
    return job


# ----------------------------------------------------------------------------- model lists
def unreadable_user_models(listed) -> dict[str, str]:
    """User model files that the zoo leaves out of its list because they cannot be read (truncated,
    damaged, no cellzoo metadata), each with the reason: widgets show them as broken instead of letting
    a model the user saved vanish without a word."""
    from cellzoo.zoo import user_model_dir
    from cellzoo.zoo.weights import read_metadata

    folder = user_model_dir()
    if not folder.is_dir():
        return {}
    listed = set(listed)
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.stem in listed:
            continue
        try:
            read_metadata(path)
            continue  # readable, left out for another reason (e.g. a zoo model of the same name)
        except Exception as exc:  # noqa: BLE001 - any reason is shown to the user
            reason = str(exc).strip() or type(exc).__name__
        out[path.stem] = (f"{path.stem} cannot be used: {reason} Save or import it again "
                          f"(`cellzoo zoo import ... --overwrite`), or delete {path}.")
    return out


def add_broken_models(combo, broken: dict[str, str]) -> None:
    """Append unusable models to a model combo box: greyed out, the reason in their tooltip."""
    from qtpy.QtCore import Qt

    for name, reason in broken.items():
        combo.addItem(f"{name}  [broken]", None)
        index = combo.count() - 1
        combo.setItemData(index, reason, Qt.ItemDataRole.ToolTipRole)
        item = combo.model().item(index) if hasattr(combo.model(), "item") else None
        if item is not None:
            item.setEnabled(False)


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
