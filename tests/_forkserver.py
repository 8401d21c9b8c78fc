"""A fork server for the suite's ``python train.py ...`` processes: each would otherwise spend ~10 s of CPU (on 2
cores) importing torch, Lightning and torchmetrics before its first line, which was most of the slow tier's time.

This process imports them once, never runs a torch operation (so no OpenMP pool exists to be forked), and forks
one child per request: the child is a real process with its own pid, working directory, environment, stdout and
stderr files, ``sys.argv`` and exit status, and runs the script or module as ``__main__`` the way ``python`` does.
What it does not see are import-time effects (a warning printed while importing): tests of those use a fresh
interpreter (``run_python(..., fresh=True)`` in ``conftest.py``), as do tests that signal or kill their process.

Protocol, one Unix-socket connection per request: the client sends one JSON line ``{"args", "cwd", "env",
"stdout", "stderr"}`` (the same file for both: stderr into stdout); the child answers its pid, then, when it is
done, its exit status, one line each. A forked process's ``sys.executable`` is the shim ``python`` written next to
the socket (:data:`SHIM`, :func:`shim_main`), so the ``python ...`` processes it starts itself (the report's evaluations) fork from
here too; DDP ranks that Lightning starts get the real interpreter.
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
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    if os.environ.get("DDPM_TEST_FORK_SHIM"):  # its own `python ...` children fork from this server too
        sys.executable = os.environ["DDPM_TEST_FORK_SHIM"]
    import torch

    torch.set_num_threads(int(req["env"].get("OMP_NUM_THREADS", default_threads)))
    args = req["args"]
    # sys.path as a new interpreter would have it: the script's folder (the working directory for -m), then
    # PYTHONPATH, then what the server has (PYTHONPATH of its own start, the standard library, site-packages)
    head = [os.getcwd() if args[0] == "-m" else os.path.dirname(os.path.abspath(args[0]))]
    head += [e for e in req["env"].get("PYTHONPATH", "").split(os.pathsep) if e]
    sys.path[:] = list(dict.fromkeys(head + sys.path))
    code: int = 0
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
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


def request(sock: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str,
            timeout: float | None = None, on_pid=None) -> int:
    """Run ``python *args`` in the server listening on ``sock`` (stdout to ``out``, stderr to ``err``: the same path
    merges them) and return its exit status (-9 when it died without one). ``on_pid(pid)`` is called once the
    process exists; on ``timeout`` its process group is killed and :class:`TimeoutError` raised."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    conn.settimeout(timeout)
    pid = None
    try:
        conn.sendall((json.dumps({"args": [str(a) for a in args], "cwd": str(cwd), "env": env, "stdout": out,
                                  "stderr": err}) + "\n").encode())
        reader = conn.makefile("r")
        pid = int(reader.readline())
        if on_pid is not None:
            on_pid(pid)
        line = reader.readline().strip()
    except TimeoutError:
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
        raise
    finally:
        conn.close()
    return int(line) if line else -9


def shim_main(real: str, sock: str) -> None:
    """The shim ``python`` (:data:`SHIM`): ``SCRIPT.py ...`` and ``-m MODULE ...`` run in the server, stdout, stderr,
    signals and the exit status relayed; interpreter options (``-u``, ``-c``...) and DDP ranks that Lightning starts
    (``LOCAL_RANK`` set) get the real interpreter."""
    import tempfile

    args = sys.argv[1:]
    if not args or not (args[0] == "-m" or args[0].endswith(".py")) or "LOCAL_RANK" in os.environ:
        os.execv(real, [real, *args])
    with tempfile.TemporaryDirectory(dir=os.path.dirname(sock)) as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")

        def forward(pid: int) -> None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                signal.signal(sig, lambda s, _f: os.kill(pid, s))

        code = request(sock, args, os.getcwd(), dict(os.environ), out, err, on_pid=forward)
        for path, stream in ((out, sys.stdout), (err, sys.stderr)):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    stream.write(f.read())
                stream.flush()
    sys.exit(code if code >= 0 else 137)


SHIM = """#!{python} -S
import sys
sys.path.insert(0, {here!r})
from _forkserver import shim_main
shim_main({python!r}, {sock!r})
"""


def main(path: str) -> None:
    sys.path.pop(0)  # this file's folder (tests/): not on a CLI process's path
    default_threads = _preload()
    shim = os.path.join(os.path.dirname(path), "python")
    with open(shim, "w") as f:
        f.write(SHIM.format(python=sys.executable, sock=path, here=os.path.dirname(os.path.abspath(__file__))))
    os.chmod(shim, 0o755)
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
