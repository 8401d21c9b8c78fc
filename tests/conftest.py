"""Shared fixtures: tiny, fast training configs composed from conf/ (nothing downloads, CPU only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a real ``python train.py`` / ``sample.py`` process started by a test."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline", **extra}


class _ForkServer:
    """The client of ``tests/_forkserver.py``: one server per test session, started on first use (about 10 s, the
    cost of importing torch and Lightning once instead of once per process)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir = ""

    def _ensure(self) -> None:
        import atexit
        import tempfile

        if self.proc is not None and self.proc.poll() is None:
            return
        self.dir = tempfile.mkdtemp(prefix="ddpm-fork-")
        env = {k: v for k, v in cli_env().items() if k != "OMP_NUM_THREADS"}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_forkserver.py"), self.sock],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the test fork server did not start")
        atexit.register(self._stop)

    def _stop(self) -> None:
        import shutil

        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def sock(self) -> str:
        return os.path.join(self.dir, "s")

    @property
    def shim(self) -> str:
        """The ``python`` that runs its arguments in the server (``sys.executable`` of the forked processes, so the
        processes they start fork from the server too); empty on a temp folder mounted noexec."""
        return "" if os.statvfs(self.dir).f_flag & os.ST_NOEXEC else os.path.join(self.dir, "python")

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float,
            merge: bool = False) -> subprocess.CompletedProcess:
        import tempfile

        from _forkserver import request

        self._ensure()
        env = {**env, "DDPM_TEST_FORK_SHIM": self.shim}
        with tempfile.TemporaryFile("w+", errors="replace") as out, \
                tempfile.TemporaryFile("w+", errors="replace") as err:
            try:
                code = request(self.sock, args, cwd, env, out.fileno(), (out if merge else err).fileno(), timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired([sys.executable, *args], timeout) from None
            text = []
            for f in (out, err):
                f.seek(0)
                text.append(f.read())
        return subprocess.CompletedProcess([sys.executable, *args], code, text[0], text[1])

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """:class:`subprocess.Popen` of ``python *args`` through the shim (a real interpreter on a noexec temp
        folder): its pid is the shim's, which passes signals on and ends as the job does; the job's own pid is what
        the job reports (a pid file)."""
        self._ensure()
        kwargs["env"] = {**kwargs.get("env", os.environ), "DDPM_TEST_FORK_SHIM": self.shim}
        return subprocess.Popen([self.shim or sys.executable, *args], **kwargs)


_FORK_SERVER = _ForkServer()


def run_python(args: list[str], cwd: Path, timeout: float = 600, fresh: bool = False, merge: bool = False,
               **env: str) -> subprocess.CompletedProcess:
    """``python *args`` (env: :func:`cli_env` plus ``env``) as a real process with its own pid, cwd, environment,
    stdout, stderr and exit status, forked from the suite's fork server (``tests/_forkserver.py``: torch and Lightning
    already imported), or, with ``fresh=True``, started from a new interpreter (a test of what happens at import
    time). ``merge=True``: stderr into stdout, as ``stderr=subprocess.STDOUT``."""
    if fresh or args[0] == "-c":
        return subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True, timeout=timeout)
    return _FORK_SERVER.run(args, cwd, cli_env(**env), timeout, merge)


# A multi-process run's env extras: tests/ importable (its callbacks, fault_callbacks.py), one thread per rank, and
# the user's view of errors (no traceback)
DDP_ENV = {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "HYDRA_FULL_ERROR": "0"}


def popen_python(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen([python, *args], **kwargs)`` with the job forked from the suite's fork server (see
    :meth:`_ForkServer.popen`: ``proc.pid`` is the shim's, not the job's)."""
    return _FORK_SERVER.popen(args, **kwargs)


def load_bench(name: str):
    """``bench/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], cwd: Path, timeout: int = 600, fresh: bool = False,
            **env: str) -> subprocess.CompletedProcess:
    """:func:`run_python`, requiring exit status 0."""
    proc = run_python(args, cwd, timeout, fresh, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc

# A network of a few thousand parameters and T=10: every objective trains for a few steps in ~1 s. Unconditional,
# as every recipe but the quickstart's (a test of a conditional model adds model.num_classes=K after it).
TINY_MODEL = [
    "model=unet_small",
    "model.num_classes=null",
    "model.ch=8",
    "model.ch_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attn_resolutions=[4]",
]


def tiny_overrides(output_dir: Path | str, *, steps: int = 4, timesteps: int = 10, batch: int = 8) -> list[str]:
    """Overrides for a seconds-long CPU run writing into ``output_dir``."""
    return [
        f"paths.output_dir={output_dir}",
        *TINY_MODEL,
        f"diffusion.num_timesteps={timesteps}",
        f"sampler.steps={timesteps}",  # the quickstart's 200 would exceed T
        f"data.batch_size={batch}",
        f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu",
        f"trainer.val_check_interval={steps}",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
        "callbacks.sample_grid.every_n_steps=0",
        "final_samples=4",
        "logger=csv",
    ]


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*extra)`` -> a composed, validated config for a tiny run in ``tmp_path/run``."""
    from ddpm.core.config import compose

    def make(*extra: str, output_dir: Path | None = None, **kw):
        return compose("train", tiny_overrides(output_dir or tmp_path / "run", **kw) + list(extra))

    return make


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/ddpm (reference stats, digits classifier)."""
    if "DDPM_CACHE" not in os.environ:
        os.environ["DDPM_CACHE"] = str(tmp_path_factory.mktemp("ddpm_cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and avoids OpenMP thrashing on a shared 2-core machine
    (a module uses it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    with torch_threads(1):
        yield


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
