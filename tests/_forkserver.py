"""A fork server for the suite's ``python train.py ...`` processes: each would otherwise spend ~10 s of CPU (on 2
cores) importing torch, Lightning and torchmetrics before its first line, which was most of the slow tier's time.

This process imports them once, never runs a torch operation (so no OpenMP pool exists to be forked), and forks
one child per request: the child is a real process with its own pid, working directory, environment, stdout and
stderr files, ``sys.argv`` and exit status, and runs the script or module as ``__main__`` the way ``python`` does.
What it does not see are import-time effects (a warning printed while importing): tests of those use a fresh
interpreter (``run_python(..., fresh=True)`` in ``conftest.py``), as do tests that signal or kill their process.

Protocol, one Unix-socket connection per request: the client passes two open file descriptors (the job's stdout and
stderr) and one JSON line ``{"args", "cwd", "env"}``. A manager process forks the job and answers its pid, then, when
it has ended, its wait status as :class:`subprocess.Popen` gives it (``-9``: killed by SIGKILL), one line each; a
client that goes away first takes the job with it. A forked process's ``sys.executable`` is the shim ``python``
written next to the socket (:data:`SHIM`, :func:`shim_main`), so the ``python ...`` processes it starts itself (the
report's evaluations, the DDP ranks that Lightning starts) fork from here too, with the shim's stdout, stderr,
signals and exit status.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import socket
import sys
import threading
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
    """One request: this process (the manager) forks the job, waits for it and answers its pid and its wait status;
    when the client goes away first (its process was killed), the job's process group is killed too."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the job (and its own subprocesses) are waited for as usual
    _, fds, _, _ = socket.recv_fds(conn, 1, 2)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            os._exit(2)
        buf += chunk
    req = json.loads(buf)
    pid = os.fork()
    if pid == 0:
        conn.close()
        try:
            _job(req, fds, default_threads)
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())

    def watch() -> None:  # EOF from the client before the answer: it died, and so does the job
        try:
            gone = not conn.recv(1)
        except OSError:
            gone = True
        if gone:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    threading.Thread(target=watch, daemon=True).start()
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass
    os._exit(0)


def _job(req: dict, fds: list[int], default_threads: int) -> None:
    os.setpgrp()  # its own group: a timeout kills it with everything it started (DDP ranks included)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, f in zip((1, 2), fds):
        os.dup2(f, fd)
    for f in set(fds):
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
    os._exit(code & 0xFF)


def request(sock: str, args: list[str], cwd: str, env: dict[str, str], out: int, err: int,
            timeout: float | None = None, on_pid=None) -> int:
    """Run ``python *args`` in the server listening on ``sock``, its stdout and stderr the open file descriptors
    ``out`` and ``err`` (passed over the socket: the job writes into them directly), and return its exit status as
    :class:`subprocess.Popen` does (``-N``: killed by signal N). ``on_pid(pid)`` is called once the process exists;
    on ``timeout`` its process group is killed and :class:`TimeoutError` raised."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    conn.settimeout(timeout)
    pid = None
    try:
        socket.send_fds(conn, [b"\0"], [out, err])
        conn.sendall((json.dumps({"args": [str(a) for a in args], "cwd": str(cwd), "env": env}) + "\n").encode())
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
    return int(line) if line else -signal.SIGKILL


def shim_main(real: str, sock: str) -> None:
    """The shim ``python`` (:data:`SHIM`): ``SCRIPT.py ...`` and ``-m MODULE ...`` run in the server with this
    process's stdout and stderr; SIGTERM, SIGINT and SIGUSR1 are passed on, and the job's end is this process's end
    (its exit status, or death by the same signal). When this process is killed, so is the job. Interpreter options
    (``-u``, ``-c``...) get the real interpreter."""
    args = sys.argv[1:]
    if not args or not (args[0] == "-m" or args[0].endswith(".py")):
        os.execv(real, [real, *args])

    def forward(pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, lambda s, _f: os.kill(pid, s))

    code = request(sock, args, os.getcwd(), dict(os.environ), 1, 2, on_pid=forward)
    if code < 0:
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


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
