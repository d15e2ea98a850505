"""A script run as a subprocess within a time cap, stopped past it the way Ctrl-C stops it: what the
GPU check and the paper run use to fit a slice of GPU time."""
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 30  # how long a step past its cap may take to stop after SIGINT before it is killed


def run_capped(command, cap, log):
    """Run a ``python ...`` line from the repository root, its output in ``log``. Past ``cap`` seconds
    it gets SIGINT, as Ctrl-C, so it stops cleanly, and is killed only if it has not stopped
    STOP_GRACE_S later. Returns ok, failed or timed out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        output.write(f"$ {command}\n")
        output.flush()
        process = subprocess.Popen([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, stdout=output,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            return "ok" if process.wait(timeout=cap) == 0 else "failed"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return "timed out"
