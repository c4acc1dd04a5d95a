"""Set resource limits on this process, then exec the candidate command (used by runner.py).

    python -m cambrian.agents.sandbox_exec --as-mb 4096 --cpu-s 600 -- cambrian train ...

A separate launcher (rather than subprocess's preexec_fn) because preexec_fn is unsafe in a process
that runs several candidates from threads. The limits are the sandbox's own (trainer/sandbox.py
apply_limits): they bound the trusted `cambrian train` process and, inherited, its contained children.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from cambrian.trainer.sandbox import apply_limits

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the agent that started it dies, so that a killed
    `cambrian evolve` leaves no orphaned candidate behind (the setting survives exec)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sandbox_exec")
    parser.add_argument("--as-mb", type=int, default=0, help="address-space limit in MiB (0: none)")
    parser.add_argument("--cpu-s", type=int, default=0, help="CPU-time limit in seconds (0: none)")
    parser.add_argument("--fsize-mb", type=int, default=0, help="largest file the candidate may write (0: none)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command given")
    apply_limits(as_mb=args.as_mb, cpu_s=args.cpu_s, fsize_mb=args.fsize_mb)
    die_with_parent()
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
