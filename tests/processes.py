"""Subprocesses whose peak resident memory is read from the process itself."""

from __future__ import annotations

import os
import subprocess
import threading


def run_with_peak(args: list[str], *, env: dict, cwd=None, timeout: float = 1800) -> tuple[int, str, float]:
    """Runs `args` to its end (killed after `timeout` seconds); returns (exit code, its
    output, the peak resident memory in MB of it and every descendant it waited for,
    from `os.wait4`'s ru_maxrss)."""
    with subprocess.Popen(args, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as process:
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        try:
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, output, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux
