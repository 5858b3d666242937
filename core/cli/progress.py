"""Progress lines for steps a user would otherwise wait through in silence.

:func:`slow_step` prints ``what...`` on stderr once a step has taken more than a second (quick
steps print nothing) and how long it took when it ends. :func:`compile_notice` says when numba is
compiling the backtest's kernels: the install compiles the main command's ahead
(:mod:`btc_quant.core.precompile`), so this is the first run of another strategy or of settings
that need another specialisation, or any run after the compiled sources changed (the compiled
code is then cached, :mod:`btc_quant.core.compiled_cache`); it takes far longer than a run that
finds the cache.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: A step quicker than this prints nothing.
SLOW_S = 1.0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def slow_step(what: str, *, after_s: float = SLOW_S) -> Iterator[None]:
    """Print ``what...`` if the block is still running after ``after_s`` seconds, then its time."""
    started = time.monotonic()
    shown = threading.Event()

    def show() -> None:
        shown.set()
        _say(f"{what}...")

    timer = threading.Timer(after_s, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            _say(f"{what}: done in {time.monotonic() - started:.1f} s")


@contextmanager
def compile_notice() -> Iterator[None]:
    """Say so once when numba starts compiling (not when it loads compiled code from its cache)."""
    from numba.core import event

    class Notice(event.Listener):
        def __init__(self) -> None:
            self.depth = 0
            self.compiled = 0
            self.started: float | None = None

        def on_start(self, ev) -> None:
            if self.started is None:
                self.started = time.monotonic()
                _say("compiling the backtest kernels with numba (once: the result is cached for the next runs)...")
            if self.depth == 0:
                self.compiled += 1
            self.depth += 1

        def on_end(self, ev) -> None:
            self.depth -= 1

    notice = Notice()
    with event.install_listener("numba:compile", notice):
        yield
    if notice.started is not None:
        _say(f"compiled {notice.compiled} kernel(s) in {time.monotonic() - notice.started:.1f} s; the next runs skip this")
