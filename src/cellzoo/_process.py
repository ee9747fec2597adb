"""Run a job generator in a child Python process, as a generator in this one.

Why: a job running in a thread of the napari process shares the GIL with the event loop. Fine-tuning
calls long C routines that keep the GIL (scipy.ndimage / scikit-image post-processing of the held-out
images, target maps of each batch), and during each the GUI cannot repaint: benchmarks/results/
gui_latency.md measured 320–430 ms stalls while fine-tuning in a thread. A child process has its own GIL.

``process_job("pkg.module:function", kwargs, cancel=token)`` starts ``python -m cellzoo._process``, sends it
the target and its keyword arguments, and yields every event the target's generator yields there; it
returns the generator's return value and raises the exception it raised (the same type where it can be
pickled, else a RuntimeError with its type and message). The target is called as
``function(**kwargs, cancel=child_token)``. Cancel is cooperative: ``cancel.cancel()`` here is passed on
(the child's token is cancelled, the job returns what it keeps, e.g. the best fine-tuned state); if this
process goes away the child's input closes and it cancels itself. Frames are pickles over the child's
stdin/stdout pipes — only between this process and the child it started, never from a file.
"""
from __future__ import annotations

import importlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import traceback
from typing import Any, Generator

_HEADER = struct.Struct("!Q")
#: how long the parent waits between looks at its cancel token while no frame arrives
POLL_S = 0.05


def _send(stream, kind: str, payload: Any) -> None:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream) -> tuple[str, Any] | None:
    header = stream.read(_HEADER.size)
    if not header or len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - our own child's pipe, see the module docstring


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class ProcessDied(RuntimeError):
    """The child process ended without a result (killed, crashed, out of memory)."""


def process_job(target: str, kwargs: dict[str, Any], cancel=None, *, env: dict[str, str] | None = None
                ) -> Generator[Any, None, Any]:
    """See the module docstring."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "cellzoo._process"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env)
    frames: queue.Queue = queue.Queue()

    def read_frames() -> None:
        # a blocking read releases the GIL: the GUI thread runs while this waits
        while True:
            try:
                frame = _receive(proc.stdout)
            except Exception as exc:  # a torn frame: the child died mid-write
                frame = ("died", repr(exc))
            frames.put(frame)
            if frame is None or frame[0] in ("return", "error", "died"):
                return

    reader = threading.Thread(target=read_frames, name="cellzoo-process-job-reader", daemon=True)
    reader.start()
    cancel_sent = False
    try:
        _send(proc.stdin, "call", (target, kwargs))
        while True:
            if cancel is not None and getattr(cancel, "cancelled", False) and not cancel_sent:
                cancel_sent = True
                try:
                    _send(proc.stdin, "cancel", None)
                except OSError:
                    pass
            try:
                frame = frames.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if frame is None or frame[0] == "died":
                code = proc.wait(timeout=30)
                raise ProcessDied(f"the job's process ended without a result (exit code {code}); if the machine "
                                  "ran out of memory, use fewer or smaller images, or a smaller batch")
            kind, payload = frame
            if kind == "event":
                yield payload
            elif kind == "return":
                return payload
            elif kind == "error":
                raise payload
    finally:
        try:
            proc.stdin.close()  # the child cancels itself if still running
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _child() -> int:
    from cellzoo.types import CancelToken

    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the job prints goes to stderr, never into the frames
    frames_in = sys.stdin.buffer
    first = _receive(frames_in)
    if first is None or first[0] != "call":
        return 2
    target, kwargs = first[1]
    token = CancelToken()

    def watch_parent() -> None:
        while True:
            try:
                frame = _receive(frames_in)
            except Exception:
                frame = None
            if frame is None or frame[0] == "cancel":
                token.cancel()
            if frame is None:
                return

    threading.Thread(target=watch_parent, name="cellzoo-parent-watch", daemon=True).start()
    try:
        module, _, name = target.partition(":")
        function = getattr(importlib.import_module(module), name)
        generator = function(**kwargs, cancel=token)
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                _send(frames_out, "return", stop.value)
                break
            _send(frames_out, "event", event)
    except BaseException as exc:  # every failure goes back to the parent, which shows it
        from cellzoo.types import Cancelled

        # the message of a user error says it all; anything else leaves its traceback on stderr
        if not isinstance(exc, (ValueError, OSError, KeyError, Cancelled, KeyboardInterrupt, SystemExit)):
            traceback.print_exc()
        try:
            _send(frames_out, "error", _picklable(exc))
        except OSError:
            return 1
    frames_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
