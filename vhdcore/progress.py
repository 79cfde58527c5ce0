"""A small progress meter for long operations (stdlib only).

On a terminal the meter redraws one line in place, at most ten times a
second: percentage, bytes done of total, rate and time left. When the
stream is not a terminal (a log file, CI), redrawing would fill the log
with carriage returns, so the meter prints a plain line at most every
:data:`PLAIN_INTERVAL` seconds and one final line when the work ends; an
operation shorter than that prints only the final line.

Bytes are *virtual* bytes of the disk: a run of zeros that is skipped
without reading counts as done, which is why the rate can jump on sparse
images and the time left is an estimate from the average rate so far.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from .sizes import format_size

#: Seconds between redraws on a terminal.
TTY_INTERVAL = 0.1
#: Seconds between plain lines when the stream is not a terminal.
PLAIN_INTERVAL = 5.0


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Report ``done`` of ``total`` bytes on ``stream`` (stderr by default).

    Args:
        total: bytes of work, or ``None`` when unknown (a pipe): then only
            bytes done and the rate are shown.
        label: a word or two shown before the figures.
        stream: where to write; ``sys.stderr`` when ``None``.
        enabled: ``False`` makes every method a no-op, so callers need no
            ``if``.
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        total: Optional[int],
        label: str = "",
        stream: Optional[TextIO] = None,
        enabled: bool = True,
        clock=time.monotonic,
    ):
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._last = None
        self._width = 0
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._interval = TTY_INTERVAL if self.tty else PLAIN_INTERVAL
        if not self.tty:
            # The first plain line comes after a full interval, not at once.
            self._last = self._start

    def line(self, final: bool = False) -> str:
        """The text of the meter for the current state."""
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [self.label] if self.label else []
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            parts.append(f"{fraction * 100:5.1f}%")
            parts.append(f"{format_size(self.done)} of {format_size(self.total)}")
        else:
            parts.append(format_size(self.done))
        parts.append(f"{format_size(int(rate))}/s")
        if final:
            parts.append(f"in {_clock(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"{_clock((self.total - self.done) / rate)} left")
        return "  ".join(parts)

    def update(self, done: int) -> None:
        """Record that ``done`` bytes are finished; redraw if it is time."""
        self.done = done
        if not self.enabled:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        self._emit(self.line())

    def finish(self) -> None:
        """Print the final state and end the line."""
        if not self.enabled:
            return
        self._emit(self.line(final=True), end=True)

    def _emit(self, text: str, end: bool = False) -> None:
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + pad + ("\n" if end else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
