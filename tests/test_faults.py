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
from conftest import ROOT, cli_env, tiny_overrides
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm import cli
from ddpm.io import safe_load_checkpoint
from ddpm.training import train

TEMP = re.compile(r"^\..+\.[^.]+\.tmp(\.\w+)?$")  # ddpm.io.atomic_write's temporary names


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
    """``fn()`` run as a command runs it (ddpm.cli): a user error is one ``Error:`` line and exit status 1."""
    with pytest.raises(SystemExit) as info, cli.user_errors():
        fn()
    assert info.value.code == 1


# ----------------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
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
def test_full_disk_in_sample_py(ckpt, tmp_path, full_disk, capsys, name):
    """sample.py: a shard, samples.npz, metrics.json, the grid: one line naming it; the earlier complete outputs
    stay (a rerun continues from the shards), no temp file."""
    from ddpm.sampling import sample

    out = tmp_path / "samples"
    cfg = sample_cfg(ckpt, out, "num_samples=6", "batch_size=3", "shard_size=3")
    full_disk(name)
    fails_cleanly(lambda: sample(cfg))
    line = one_error_line(capsys, "No space left on device (ENOSPC) writing", "is free", "Free some space")
    shown = Path(re.search(r"writing (\S+):", line).group(1))
    assert re.search(name, str(shown)) and shown.parent.is_relative_to(out) and not shown.exists()
    assert temp_files_under(tmp_path) == []


def test_full_disk_at_the_frontier_report_and_export(ckpt, tmp_path, full_disk, capsys):
    """The sampler frontier's table, the report's output file, an exported pipeline's files."""
    from test_report import write_job

    from ddpm.config import compose
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.export import export_pipeline
    from ddpm.frontier import frontier
    from ddpm.nets import UNet
    from ddpm.report import options, report

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
