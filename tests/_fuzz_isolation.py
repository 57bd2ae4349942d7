"""Isolation for the fuzzer: each example runs in a forked child, so that a crash (a
signal, or a sanitizer's report) is a reported failure rather than the end of pytest, and
every example starts from the same clean process.

The children are forked by a server process, not by pytest: a fork costs time in
proportion to the forking process's memory (~0.1 s for a process that imported torch,
twice that after one torch.compile, and pytest's grows with every test before this one),
and the server's stays as it was after importing torch and fusedopt.
"""
from __future__ import annotations

import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from typing import Callable, Optional, Tuple

import torch
import torch._dynamo  # noqa: F401  torch.optim's constructors import it: once here, not in every child

from _fuzz_runner import FuzzFailure, run_example

CHILD_TIMEOUT = 120.0  # seconds; a child that takes longer is reported as hung
Outcome = Tuple[Optional[str], str]  # (None, how the example ended) or (failure category, message)


def outcome(fn: Callable[[], str]) -> Tuple[Optional[str], str]:
    """(None, what fn returned), or (category, message) of its failure."""
    try:
        return None, fn()
    except FuzzFailure as failure:
        return failure.category, str(failure)
    except BaseException:  # noqa: BLE001 -- reported as a failure of the fuzzer itself
        return "harness", traceback.format_exc()


def in_child(fn: Callable[[], str], timeout: float = CHILD_TIMEOUT) -> Outcome:
    """outcome(fn) in a forked child of this process; a child that dies is a "crash"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            data = json.dumps(outcome(fn)).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + timeout
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", f"no answer after {timeout:.0f} s"
            chunk = os.read(pipe.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "crash", f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    if os.WEXITSTATUS(status) != 0 or not chunks:
        return "crash", f"exit status {os.WEXITSTATUS(status)}"
    category, message = json.loads(b"".join(chunks))
    return category, message


class ForkServer:
    """A process that imported torch, fusedopt and the fuzzer and then only forks one child
    per example. Same sys.path and environment as pytest's (sanitizer runtimes, PYTHONPATH,
    TRITON_INTERPRET), and it checks that it imported the same fusedopt."""

    def __init__(self):
        self.process: Optional[subprocess.Popen] = None

    def run(self, scenario, backend: str) -> Outcome:
        if self.process is None or self.process.poll() is not None:
            self._start()
        _send(self.process.stdin, (scenario, backend))
        result = _receive(self.process.stdout)
        if result is None:
            self.process = None
            return "crash", "the fork server died"
        return result

    def _start(self) -> None:
        import fusedopt

        code = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import _fuzz_isolation as f; f.serve()"
        self.process = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        served = _receive(self.process.stdout)
        if served != fusedopt.__file__:
            raise RuntimeError(f"the fork server imported fusedopt from {served}, pytest from {fusedopt.__file__}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.process = None


def serve() -> None:
    """The fork server's loop: (scenario, backend) in, Outcome out, until stdin closes."""
    import fusedopt

    torch.set_num_threads(1)  # as the test suite runs (conftest.py)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever an example prints goes to stderr, not into the replies
    requests = sys.stdin.buffer
    _send(replies, fusedopt.__file__)
    while True:
        request = _receive(requests)
        if request is None:
            return
        scenario, backend = request
        _send(replies, in_child(lambda: run_example(scenario, backend)))


def _send(pipe, value) -> None:
    data = pickle.dumps(value)
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def _receive(pipe):
    """The next value from `pipe`, or None at its end."""
    header = pipe.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(pipe.read(struct.unpack("<Q", header)[0]))
