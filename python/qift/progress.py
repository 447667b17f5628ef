# SPDX-License-Identifier: MIT
"""A dependency-free text progress bar for qift.gptq's ``progress`` callback."""

import sys
import time


def progress_bar(description="gptq", file=None, width=30, min_interval=0.1):
    """Returns a callable ``progress(done, total)`` that draws a one-line bar.

    It redraws at most every ``min_interval`` seconds (and always at 100%), writes to ``file``
    (default: sys.stderr) and ends the line when done == total. Any callable taking
    (done, total) works as gptq's progress, e.g. a tqdm adapter."""
    out = sys.stderr if file is None else file
    start = time.monotonic()
    last = [0.0]

    def update(done, total):
        now = time.monotonic()
        finished = done >= total
        if not finished and now - last[0] < min_interval:
            return
        last[0] = now
        fraction = done / total if total else 1.0
        filled = int(round(width * fraction))
        bar = "#" * filled + "." * (width - filled)
        out.write(f"\r{description} [{bar}] {100 * fraction:5.1f}% {now - start:6.1f} s")
        if finished:
            out.write("\n")
        out.flush()

    return update
