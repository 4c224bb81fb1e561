"""SIGINT / SIGTERM during training: the first asks for a clean stop, the second ends
the process at once.

Python runs signal handlers only on the main thread, between bytecodes, so a main
thread blocked in a collective or a barrier (a peer that is gone, a checkpoint
barrier) would never see a second Ctrl-C. :class:`StopSignals` therefore installs a
no-op Python handler and points ``signal.set_wakeup_fd`` at a pipe: the C-level
handler writes the signal number there, and a daemon thread that reads it (i) sets
:attr:`StopSignals.event` on the first signal, which the training loop shares with
every host at its next log step (``trainers.distributed.agree``), and (ii) on the
second, prints one line and ends the process with ``os._exit(128 + signum)``, whatever
the main thread is blocked in.
"""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    """Context manager catching SIGINT and SIGTERM (main thread only; elsewhere it
    does nothing).

    Attributes:
      event: set on the first signal.
      signal_name: ``"SIGTERM"`` / ``"SIGINT"`` of the first signal, else None.
      signum: its number (0 before any).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.event = threading.Event()
        self.signal_name: str | None = None
        self.signum = 0
        self._old: dict = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, _ignore)
        self._thread = threading.Thread(target=self._watch, name="autotune-signals",
                                        daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        r = self._pipe[0]
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:  # write end closed: the context ended
                return
            for signum in data:
                if signum not in [int(s) for s in self.SIGNALS]:
                    continue
                if self.event.is_set():
                    name = signal.Signals(signum).name
                    os.write(2, f"autotune: second {name}: exiting now without a checkpoint "
                                f"(the last checkpoint written is kept)\n"
                             .encode())
                    os._exit(128 + signum)
                self.signum = signum
                self.signal_name = signal.Signals(signum).name
                self.event.set()

    def __exit__(self, *exc) -> None:
        if self._pipe is None:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        r, w = self._pipe
        os.close(w)
        if self._thread is not None:
            self._thread.join(1.0)
        os.close(r)
        self._pipe = None


def _ignore(signum, frame) -> None:
    """The Python-level handler: the work is done by the wakeup-fd thread."""
