"""`naturelm ...` run in the test's own process, for tests about what a command writes and returns.

A fresh interpreter spends about 10 s importing torch and transformers before the command starts; tests about what
only a process shows (signals, kills, imports at start-up, the environment) start one instead.
"""

import contextlib
import os
import subprocess
import sys
import tempfile


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """`naturelm.cli.main(args)`: its exit code and what it wrote to standard output and error, captured both as
    `sys.stdout` / `sys.stderr` and at the file descriptors (where log handlers made earlier write)."""
    from naturelm.cli import main

    streams = (sys.stdout, sys.stderr)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        for stream in streams:
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            with open(1, "w", closefd=False) as fd_out, open(2, "w", closefd=False) as fd_err, \
                    contextlib.redirect_stdout(fd_out), contextlib.redirect_stderr(fd_err):
                code = main(args)
        finally:
            for stream in streams:
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["naturelm", *args], code, out.read(), err.read())
