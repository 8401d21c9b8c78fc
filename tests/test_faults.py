"""Faults on a cluster: a full disk or quota at every kind of write, a dead DDP rank, a non-finite loss on one
rank, SIGTERM to every rank. Each ends in one ``Error:`` line (or a clean exit) that says what happened and how
to go on; nothing is torn and every rank agrees.

The disk faults are injected in this process: files opened for writing whose path matches a pattern get a
``write`` that raises ``OSError(ENOSPC | EDQUOT)`` once a few bytes went through (a half-written temporary file
is there when it fails). The multi-process tests start ``train.py`` with 2 gloo processes (marked slow).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DDP_ENV, ROOT, cli_env, popen_python, run_python, tiny_overrides
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.commands.training import train
from ddpm.core import cli
from ddpm.core.io import safe_load_checkpoint

TEMP = re.compile(r"^\..+\.[^.]+\.tmp(\.\w+)?$")  # ddpm.core.io.atomic_write's temporary names


class _FullFile:
    """A file object whose writes fail with ``code`` once ``budget`` bytes have gone through."""

    def __init__(self, f, code: int, budget: int, path: str):
        self._f, self._code, self._left, self._path = f, code, budget, path

    def write(self, data):
        if len(data) > self._left:
            raise OSError(self._code, os.strerror(self._code), self._path)
        self._left -= len(data)
        return self._f.write(data)

    def fileno(self):  # no file descriptor: C writers (PIL) write through write() too
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(pattern, code)``: from now on, writes to files whose path matches ``pattern`` (a regex) fail
    with ``code`` after 64 bytes; returns the list of paths that failed."""
    real_open = builtins.open
    failed: list[str] = []

    def arm(pattern: str, code: int = errno.ENOSPC) -> list[str]:
        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(m in mode for m in "wax") and isinstance(file, str | os.PathLike) and re.search(pattern,
                                                                                                 str(file)):
                failed.append(str(file))
                return _FullFile(f, code, 64, str(file))
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        return failed

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # the user's view: no traceback
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    return arm


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    return lines[0]


def temp_files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP.match(p.name)]


def fails_cleanly(fn) -> None:
    """``fn()`` run as a command runs it (ddpm.core.cli): a user error is one ``Error:`` line and exit status 1."""
    with pytest.raises(SystemExit) as info, cli.user_errors():
        fn()
    assert info.value.code == 1


# ----------------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_full_disk_at_a_checkpoint_names_the_file_the_space_and_the_resume(tiny, tmp_path, full_disk, capsys, code):
    """The step-4 checkpoint cannot be written: one line with the file, the bytes it needs and those free, the
    last good checkpoint (step 2) and the command that resumes from it; that checkpoint loads; no temp file."""
    run = tmp_path / "run"
    cfg = tiny("callbacks.model_checkpoint.every_n_train_steps=2", "final_samples=0", steps=6)
    failed = full_disk(r"step_00000004\.ckpt", code)
    fails_cleanly(lambda: train(cfg))
    assert failed and TEMP.match(Path(failed[0]).name)  # the write went through atomic_write's temporary file
    line = one_error_line(capsys, f"writing {run / 'checkpoints' / 'step_00000004.ckpt'}:",
                          "it needs about", "is free", f"last good checkpoint is {run / 'checkpoints' / 'last.ckpt'} "
                          "(step 2)", "hydra.run.dir=", "ckpt_path=last")
    assert ("(ENOSPC)" if code == errno.ENOSPC else "(EDQUOT)") in line
    needed = float(re.search(r"needs about ([\d.]+) kB", line).group(1)) * 1000
    size = (run / "checkpoints" / "last.ckpt").stat().st_size
    assert 0.5 * size < needed < 1.5 * size  # the estimate is the checkpoint's size
    assert safe_load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (run / "checkpoints" / "step_00000004.ckpt").exists()
    assert temp_files_under(tmp_path) == []


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
@pytest.mark.parametrize(("name", "last_good"), [("metrics.json", 4), ("samples.png", 4), ("step_00000004.png", 2)])
def test_full_disk_at_the_end_of_training_or_at_a_grid(tiny, tmp_path, full_disk, capsys, name, last_good):
    """The final metrics.json, the final samples grid, a periodic grid (drawn before that step's checkpoint):
    one line naming the file, with the last good checkpoint and the resume command; no temp file."""
    run = tmp_path / "run"
    cfg = tiny("callbacks.sample_grid.every_n_steps=4", "callbacks.sample_grid.num_images=4",
               "callbacks.model_checkpoint.every_n_train_steps=2", steps=4)
    full_disk(re.escape(name))
    fails_cleanly(lambda: train(cfg))
    shown = run / "samples" / name if name.startswith("step") else run / name
    one_error_line(capsys, f"writing {shown}:", "is free", f"(step {last_good})", "ckpt_path=last")
    assert safe_load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == last_good
    assert not shown.exists()
    assert temp_files_under(tmp_path) == []


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.mark.parametrize("name", [r"shards/.*\.npz", "samples.npz", "metrics.json", "samples.png"])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_full_disk_in_sample_py(ckpt, tmp_path, full_disk, capsys, name):
    """sample.py: a shard, samples.npz, metrics.json, the grid: one line naming it; the earlier complete outputs
    stay (a rerun continues from the shards), no temp file."""
    from ddpm.commands.sampling import sample

    out = tmp_path / "samples"
    cfg = sample_cfg(ckpt, out, "num_samples=6", "batch_size=3", "shard_size=3")
    full_disk(name)
    fails_cleanly(lambda: sample(cfg))
    line = one_error_line(capsys, "No space left on device (ENOSPC) writing", "is free", "Free some space")
    shown = Path(re.search(r"writing (\S+):", line).group(1))
    assert re.search(name, str(shown)) and shown.parent.is_relative_to(out) and not shown.exists()
    assert temp_files_under(tmp_path) == []


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_full_disk_at_the_frontier_report_and_export(ckpt, tmp_path, full_disk, capsys):
    """The sampler frontier's table, the report's output file, an exported pipeline's files."""
    from test_report import write_job

    from ddpm.commands.export import export_pipeline
    from ddpm.commands.frontier import frontier
    from ddpm.commands.report import options, report
    from ddpm.core.config import compose
    from ddpm.core.diffusion import GaussianDiffusion
    from ddpm.core.nets import UNet

    frontier_cfg = compose("frontier", [f"ckpt_path={ckpt}", "samplers=[ddim]", "steps=[3]", "num_samples=6",
                                        "batch_size=6", "seed_sets=1", "num_boot=5", "fid.feature_extractor=digits",
                                        "progress=false", "device=cpu", f"out_dir={tmp_path / 'frontier'}"])
    full_disk(r"frontier\.md")
    fails_cleanly(lambda: frontier(frontier_cfg))
    one_error_line(capsys, f"writing {tmp_path / 'frontier' / 'frontier.md'}:", "is free")

    write_job(tmp_path / "multirun", "0", {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse"},
              train={"global_step": 10, "val/bpd": 4.3})
    table = tmp_path / "table.md"
    table.write_text("the previous report\n")
    full_disk(r"table\.md", errno.EDQUOT)
    fails_cleanly(lambda: report(options(compose("report", [f"multirun_dir={tmp_path / 'multirun'}",
                                                            f"out={table}"]))))
    one_error_line(capsys, f"Disk quota exceeded (EDQUOT) writing {table}:", "quota -s")
    assert table.read_text() == "the previous report\n"

    net = UNet(in_channels=1, out_channels=1, resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(4,), dropout=0.0)
    diffusion = GaussianDiffusion.from_config("linear", 10, "eps", "fixed_large", "mse")
    full_disk(r"config\.json")
    fails_cleanly(lambda: export_pipeline(net, diffusion, tmp_path / "export"))
    # the export is staged in a hidden folder beside the destination; the line names the file it stands for
    one_error_line(capsys, f"writing {tmp_path / 'export' / 'unet' / 'config.json'}:", "is free")
    assert not (tmp_path / "export").exists()
    assert temp_files_under(tmp_path) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_full_disk_outside_the_atomic_writer_is_one_line_too(tmp_path, full_disk, capsys):
    """A library's own write (here a plain open(): Lightning's CSV log, safetensors) meeting ENOSPC: the same
    line, naming the file the error names."""
    target = tmp_path / "log.csv"
    full_disk(r"log\.csv")

    def write():
        with open(target, "w") as f:
            f.write("x" * 1000)

    fails_cleanly(write)
    one_error_line(capsys, f"No space left on device (ENOSPC) writing {target}:", "is free")


def test_a_full_disk_while_hydra_writes_its_run_directory_is_one_line(tmp_path, full_disk, capsys, monkeypatch):
    """Hydra writes .hydra/config.yaml before the job starts (outside the job's error handling): a full disk
    there is the same one line, not Hydra's traceback, and the job never starts."""
    ran = []
    monkeypatch.setattr(sys, "argv", ["nll", f"hydra.run.dir={tmp_path / 'run'}"])
    full_disk(r"\.hydra[/\\]config\.yaml")
    with pytest.raises(SystemExit) as info:
        cli.hydra_app("nll", ran.append)
    assert info.value.code == 1 and ran == []
    one_error_line(capsys, "No space left on device (ENOSPC) writing", "config.yaml", "is free")


# ----------------------------------------------------------------------------------------------- DDP faults
def ddp_args(run: Path, steps: int, *extra: str) -> list[str]:
    """A real 2-process gloo ``train.py`` run in ``run`` (per-rank batch 16: big enough that a plain 1x1 conv's
    weight gradients came out in other strides than the weights, which DDP warned about)."""
    return [sys.executable, str(ROOT / "train.py"), *tiny_overrides(run, steps=steps, batch=32), "final_samples=0",
            "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", f"hydra.run.dir={run}",
            "+callbacks.rank_info._target_=fault_callbacks.RankInfo", *extra]


def ddp_env() -> dict[str, str]:
    return cli_env(**DDP_ENV)


def run_ddp(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``args`` (from :func:`ddp_args`) run to the end, stdout and stderr together; rank 0 forked from the suite's
    fork server (conftest.run_python), and so is rank 1, which Lightning starts through the server's python shim."""
    return run_python(args[1:], cwd, timeout, merge=True, **DDP_ENV)


def rank_pids(run: Path, deadline_s: float, proc: subprocess.Popen) -> list[int]:
    """Both ranks' pids, once both have written a step checkpoint's worth of training."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None:
        pids = sorted(run.glob("pid_rank*.txt"))
        if len(pids) == 2 and any((run / "checkpoints").glob("step_*.ckpt")):
            return [int(p.read_text()) for p in pids]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.communicate(timeout=30)[0][-3000:])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").is_file() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def whole_checkpoints(run: Path) -> dict[str, int]:
    """Every file in checkpoints/ loads as a checkpoint (no torn or temporary file): ``{name: step}``."""
    files = sorted((run / "checkpoints").iterdir())
    assert not [p for p in files if TEMP.match(p.name)], files
    return {p.name: int(safe_load_checkpoint(p)["global_step"]) for p in files}


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_one_line_and_the_resume_command_works(tmp_path):
    """kill -9 of rank 1 mid-run: rank 0 exits within 30 s with one line naming the dead rank, the last good
    checkpoint and the resume command; only whole checkpoints; no process left; the resume command runs."""
    run = tmp_path / "run"
    args = ddp_args(run, 100_000, "callbacks.model_checkpoint.every_n_train_steps=2",
                    "trainer.val_check_interval=100000")
    proc = popen_python(args[1:], cwd=tmp_path, env=ddp_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True)
    try:
        rank0, rank1 = rank_pids(run, 240, proc)
        os.kill(rank1, signal.SIGKILL)
        killed = time.time()
        out, _ = proc.communicate(timeout=60)
        took = time.time() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert took < 30, took
    assert proc.returncode == 1, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    line = errors[0]
    assert "another process of this 2-process run died (rank 1, killed by SIGKILL); this one (rank 0)" in line, line
    steps = whole_checkpoints(run)
    assert f"last good checkpoint is {run / 'checkpoints' / 'last.ckpt'} (step {steps['last.ckpt']})" in line, line
    assert not alive(rank1) and not alive(rank0)

    command = shlex.split(line.split("resume from it with: ", 1)[1])
    assert command[:2] == ["python", "train.py"] and command[-1] == "ckpt_path=last"
    assert f"hydra.run.dir={run}" in command and "trainer.max_steps=100000" in command
    stop = steps["last.ckpt"] + 1
    command = [sys.executable, str(ROOT / "train.py"),
               *(f"trainer.max_steps={stop}" if a == "trainer.max_steps=100000" else a for a in command[2:])]
    done = run_ddp(command, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Restoring states from the checkpoint" in done.stdout
    assert whole_checkpoints(run)["last.ckpt"] == stop


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_is_decided_by_all_ranks(tmp_path):
    """A NaN loss on rank 1 only (finite gradients) at step 2. skip: both ranks skip that step, and their weights,
    EMA and EMA counts are equal after it. stop: both ranks stop with the same message."""
    poison = ["+callbacks.nan._target_=fault_callbacks.NaNLossOnRank", "+callbacks.nan.rank=1",
              "+callbacks.nan.step=2"]
    skip = run_ddp(ddp_args(tmp_path / "skip", 4, *poison, "nan_policy=skip"), tmp_path)
    assert skip.returncode == 0, skip.stdout[-3000:]
    assert "skipping optimizer step at global step 2: loss " in skip.stdout
    hashes = [(tmp_path / "skip" / f"weights_sha_rank{r}.txt").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    ckpt = safe_load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and int(ckpt["state_dict"]["ema_num_updates"]) == 3  # one step skipped

    stop = run_ddp(ddp_args(tmp_path / "stop", 4, *poison, "nan_policy=stop"), tmp_path)
    assert stop.returncode != 0
    errors = [ln for ln in stop.stdout.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 2 and errors[0] == errors[1], stop.stdout[-3000:]  # one line per rank, the same
    assert "Non-finite training step at global step 2: loss " in errors[0] and "nan on rank 1" in errors[0]
    assert "Traceback" not in stop.stdout


@pytest.mark.slow
def test_sigterm_to_both_ranks_then_resume_is_bit_identical_and_the_console_is_clean(tmp_path):
    """SIGTERM (as SLURM sends it) to both ranks: one consistent last.ckpt, exit 0; the resume on 2 processes
    ends with the same weights, EMA and optimizer state as an uninterrupted 2-process run of the same length,
    whose console carries no torch warning."""
    run = tmp_path / "run"
    common = ["callbacks.model_checkpoint.every_n_train_steps=2", "trainer.val_check_interval=100000"]
    proc = popen_python(ddp_args(run, 100_000, *common)[1:], cwd=tmp_path, env=ddp_env(), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
    try:
        pids = rank_pids(run, 240, proc)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGTERM" in out and "Error" not in out
    stopped = whole_checkpoints(run)["last.ckpt"]
    assert 2 <= stopped < 100_000
    deadline = time.time() + 30
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)

    resumed = run_ddp([a if not a.startswith("trainer.max_steps=") else f"trainer.max_steps={stopped + 2}"
                       for a in ddp_args(run, 100_000, *common)] + ["ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    straight = run_ddp(ddp_args(tmp_path / "straight", stopped + 2, *common), tmp_path)
    assert straight.returncode == 0, straight.stdout[-3000:]
    noise = [ln for ln in straight.stdout.splitlines() if re.search(r"warn|Grad strides|\[W\d", ln, re.I)
             and "GroupNorm cannot use the paper's 32 groups" not in ln]  # (ddpm's note on the tiny test model)
    assert noise == [], noise

    a = safe_load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = safe_load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == stopped + 2
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for i, state in a["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer_states"][0]["state"][i][name]), (i, name)
    straight_sha = (tmp_path / "straight" / "weights_sha_rank0.txt").read_text()
    for r in (0, 1):  # and every rank of the resumed run holds those weights
        assert (run / f"weights_sha_rank{r}.txt").read_text() == straight_sha

