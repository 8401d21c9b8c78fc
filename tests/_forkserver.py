"""A fork server for the suite's ``python train.py ...`` processes: each would otherwise spend ~10 s of CPU (on 2
cores) importing torch, Lightning and torchmetrics before its first line, which was most of the slow tier's time.

This process imports them once, never runs a torch operation (so no OpenMP pool exists to be forked), and forks
one child per request: the child is a real process with its own pid, working directory, environment, stdout and
stderr files, ``sys.argv`` and exit status, and runs the script or module as ``__main__`` the way ``python`` does.
What it does not see are import-time effects (a warning printed while importing): tests of those use a fresh
interpreter (``run_python(..., fresh=True)`` in ``conftest.py``), as do tests that signal or kill their process.

Protocol, one Unix-socket connection per request: the client sends one JSON line ``{"args", "cwd", "env",
"stdout", "stderr"}`` (the same file for both: stderr into stdout); the child answers its pid, then, when it is done, its exit status, one line each.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import socket
import sys
import traceback


def _preload() -> int:
    import hydra  # noqa: F401
    import lightning  # noqa: F401
    import torch  # noqa: F401

    for name in ("ddpm.commands.training", "ddpm.commands.sampling", "ddpm.commands.nll", "ddpm.commands.report",
                 "ddpm.commands.shell"):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a child that needs it imports it (and reports the error) itself
            pass
    return torch.get_num_threads()


def _serve(conn: socket.socket, default_threads: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the job's own subprocesses are waited for as usual
    os.setpgrp()  # the client kills the whole group (DDP ranks included) on a timeout
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            os._exit(2)
        buf += chunk
    req = json.loads(buf)
    conn.sendall(f"{os.getpid()}\n".encode())
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = out if req["stderr"] == req["stdout"] else os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                                               0o644)
    for fd, f in ((1, out), (2, err)):
        os.dup2(f, fd)
    for f in {out, err}:
        os.close(f)
    for entry in reversed(req["env"].get("PYTHONPATH", "").split(os.pathsep)):  # as a new interpreter would
        if entry and entry not in sys.path:
            sys.path.insert(1, entry)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    import torch

    torch.set_num_threads(int(req["env"].get("OMP_NUM_THREADS", default_threads)))
    args = req["args"]
    code: int = 0
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as e:  # as the interpreter does: None -> 0, an int, anything else printed -> 1
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter does: the (possibly replaced) sys.excepthook
        try:
            sys.excepthook(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass
    os._exit(code & 0xFF)


def main(path: str) -> None:
    default_threads = _preload()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            try:
                _serve(conn, default_threads)
            finally:
                os._exit(70)
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1])
