"""Progress lines on stderr, so stdout stays a clean table."""
import sys
import time
from typing import Optional, TextIO


class Progress:
    """Called once per unit of work: prints '[3/40, 12 s] large float32 Adam(...)'.

    On a terminal each message overwrites the previous one; in a log file
    each gets its own line.
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self.interactive = self.stream.isatty()

    def __call__(self, message: str) -> None:
        self.count += 1
        elapsed = time.perf_counter() - self.start
        text = f"[{self.count}/{self.total}, {elapsed:.0f} s] {message}"
        if self.interactive:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        elapsed = time.perf_counter() - self.start
        prefix = "\r\033[K" if self.interactive else ""
        self.stream.write(f"{prefix}done in {elapsed:.0f} s\n")
        self.stream.flush()
