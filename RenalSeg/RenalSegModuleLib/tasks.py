"""Long work off Slicer's GUI thread: a cancellable background task and a persistent inference worker.

MRML and Qt may only be touched on the main thread, so workers never call back into the scene:
they queue progress and results, and the GUI drains the queue from a timer (``poll``). Tests call
``poll`` or ``wait`` directly, without Qt.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Progress = Callable[[float, str], None]


class BackgroundTask:
    """Run ``work(progress, cancel)`` on a worker thread; deliver progress, result or error on ``poll``.

    Example (in the GUI, ``poll`` is called from a ``qt.QTimer``)::

        task = BackgroundTask(lambda progress, cancel: engine.segment(ct, progress=progress, cancel=cancel))
        task.start()
        ...
        task.poll(on_progress=bar.setValue, on_done=write_segments, on_error=show_error)
    """

    def __init__(self, work: Callable[[Progress, threading.Event], Any]):
        self._work = work
        self.cancel_event = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.finished = False

    def start(self) -> "BackgroundTask":
        self._thread = threading.Thread(target=self._run, name="RenalSegTask", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._work(lambda fraction, message: self._events.put(("progress", (fraction, message))), self.cancel_event)
        except BaseException as exc:  # delivered to the GUI thread, which shows it
            self._events.put(("error", exc))
        else:
            self._events.put(("done", result))

    def cancel(self) -> None:
        """Ask the work to stop at its next check; the error handler then receives the engine's ``Cancelled``."""
        self.cancel_event.set()

    def poll(self, on_progress: Progress | None = None, on_done: Callable[[Any], None] | None = None,
             on_error: Callable[[BaseException], None] | None = None) -> bool:
        """Deliver queued events on the calling (main) thread; return True once the task has finished."""
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                return self.finished
            if kind == "progress":
                if on_progress:
                    on_progress(*value)
            else:
                self.finished = True
                handler = on_done if kind == "done" else on_error
                if handler:
                    handler(value)
                elif kind == "error":
                    raise value

    def wait(self, timeout: float | None = None, **handlers) -> bool:
        """Block until the task ends (headless use and tests), then deliver its events like ``poll``."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll(**handlers)


class PersistentWorker:
    """One long-lived inference thread: models, cuDNN plans and caches stay on the thread that made them.

    ``submit`` returns a ``concurrent.futures.Future``; the GUI checks ``future.done()`` from a timer and
    applies the result on the main thread.
    """

    def __init__(self, name: str = "RenalSegInference"):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, function: Callable, *args, **kwargs) -> Future:
        return self._executor.submit(function, *args, **kwargs)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
