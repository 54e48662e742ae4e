"""A one-line progress report on stderr for long `streamer detect` runs.

Shown only on a terminal and only once the run has taken `delay` seconds (so short runs and pipes stay quiet),
or always with mode "on"; redrawn in place at most every `interval` seconds. No third-party dependency.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

MODES = ("auto", "on", "off")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


class Progress:
    """`update(done, rows)` as work advances (cheap when nothing is drawn), `note(text)` for a phase without
    updates (waiting for the server), `close()` at the end. `total` is the expected `done` (bytes), or None."""

    BAR = 24

    def __init__(self, total: int | None, mode: str = "auto", stream: TextIO | None = None, delay: float = 1.5,
                 interval: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total or None
        self.tty = self.stream.isatty()
        self.enabled = mode == "on" or (mode == "auto" and self.tty)
        self.delay = 0.0 if mode == "on" else delay
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.shown = False
        self._next = self.started + self.delay
        self._width = 0
        self._lock = threading.Lock()  # update() may come from grpc's request thread, note() from the caller's

    def update(self, done: int, rows: int, what: str = "read") -> None:
        if not self.enabled:
            return
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        seconds = now - self.started
        if self.total:
            share = min(done / self.total, 1.0)
            filled = round(share * self.BAR)
            text = (f"[{'#' * filled}{'.' * (self.BAR - filled)}] {share:4.0%}  {rows:,} rows {what}, "
                    f"{_size(done)} of {_size(self.total)}, {seconds:.0f} s")
        else:
            text = f"{rows:,} rows {what}, {_size(done)}, {seconds:.0f} s"
        self._draw(text)

    def note(self, text: str) -> None:
        """Say what is happening now, if the report is being shown (or due)."""
        if self.enabled and (self.shown or self.clock() >= self.started + self.delay):
            self._draw(f"{text}, {self.clock() - self.started:.0f} s")

    def _draw(self, text: str) -> None:
        text = "streamer detect: " + text
        with self._lock:
            pad = max(self._width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
            self._width = len(text)
            self.shown = True

    def close(self) -> None:
        """Erase the line on a terminal; end it elsewhere."""
        with self._lock:
            if self.shown:
                self.stream.write("\r" + " " * self._width + "\r" if self.tty else "\n")
                self.stream.flush()
                self.shown = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MODES", "Progress"]
