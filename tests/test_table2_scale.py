"""Table 2 at CIFAR-10 scale end to end, on a CPU stand-in (issue 30 item 2): tiny CIFAR-shaped data in the
torchvision layout, two rows, each trained with DDP over 2 gloo processes through the documented sequence of
single runs (``sweep=table2 hydra.mode=RUN objective=...``), the multirun of the same rows finding them finished
(the sweep resumes), then ``python -m ddpm.report ... evaluate=true devices=2``: each evaluation is a sample.py
run over 2 gloo processes, FID and IS in the TF-Inception network's features (the real architecture with
random weights written here, passed as ``fid.inception_weights``: nothing downloads), the NLL on the test split.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_MODEL, cli_env, run_cli, run_python
from test_data import write_fake_cifar
from test_report import rows_by_objective

ROWS = ("simple", "eps_vlb_fixed")


def inception_stand_in(path: Path) -> Path:
    """torch-fidelity's TF-Inception network with random (seeded) weights, saved as a plain state dict."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    class RandomInception(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # keep the random initialisation
            return None

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: {}  # never reached for the weights: no download
    try:
        torch.manual_seed(0)
        net = RandomInception("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        tfi.load_state_dict_from_url = original
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, path)
    return path


def tiny_cifar_run(data_root: Path, sweep: Path) -> list[str]:
    return ["data=cifar10", f"data.root={data_root}", "data.num_workers=0", "data.persistent_workers=false",
            "data.batch_size=8", f"hydra.sweep.dir={sweep}", *TINY_MODEL, "diffusion.num_timesteps=10",
            "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.limit_val_batches=0",
            "callbacks.model_checkpoint.every_n_train_steps=0", "final_samples=4", "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar", "trainer.enable_model_summary=false"]


def test_the_table2_sweep_resumes_into_one_directory_per_row_and_data():
    """sweep=table2 as sweep=table2_digits: ckpt_path=last and a fixed directory per row, so a rerun (or a requeued
    job) continues; a single run of one row (hydra.mode=RUN, for DDP on one machine) writes where its multirun job
    would; the digits rows of this sweep do not share table2_digits's directories (another recipe)."""
    from omegaconf import OmegaConf

    from ddpm.core.config import compose

    cfg = compose("train", ["sweep=table2", "data=cifar10", "objective=mu_mse", "hydra.mode=RUN"])
    assert cfg.ckpt_path == "last" and cfg.trainer.max_steps == 800000
    sweep_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
    assert sweep_dir == "multirun/table2/cifar10"
    assert OmegaConf.select(cfg, "hydra.run.dir") == f"{sweep_dir}/mu_mse" == f"{sweep_dir}/{cfg.hydra.sweep.subdir}"
    digits = compose("train", ["sweep=table2", "objective=simple"])
    miniature = compose("train", ["sweep=table2_digits", "objective=simple"])
    assert digits.hydra.sweep.dir != miniature.hydra.sweep.dir


@pytest.mark.slow
def test_table2_at_cifar10_scale_on_a_cpu_stand_in(tmp_path):
    data_root = tmp_path / "cifar10"
    write_fake_cifar(data_root, n_per_batch=4, n_test=6)
    weights = inception_stand_in(tmp_path / "pt_inception_random.pth")
    sweep = tmp_path / "multirun" / "table2_cifar10"
    env = {"OMP_NUM_THREADS": "1", "DDPM_CACHE": str(tmp_path / "cache")}
    tiny = tiny_cifar_run(data_root, sweep)

    # one multi-GPU machine: the rows one after the other, each a single run with DDP over 2 processes
    for row in ROWS:
        proc = run_cli([str(ROOT / "train.py"), "sweep=table2", "hydra.mode=RUN", f"objective={row}",
                        "trainer=ddp", "trainer.devices=2", *tiny], cwd=tmp_path, **env)
        metrics = json.loads((sweep / row / "metrics.json").read_text())
        assert metrics["global_step"] == 3, proc.stderr[-2000:]
        hparams = (sweep / row / ".hydra" / "config.yaml").read_text()
        assert "strategy: ddp" in hparams and "devices: 2" in hparams
        log = (sweep / row / "train.log").read_text() if (sweep / row / "train.log").is_file() else ""
        assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr + log, (proc.stdout + proc.stderr)[-3000:]

    # the multirun of the same rows finds them in the same directories, finished: it resumes, trains nothing
    again = run_cli([str(ROOT / "train.py"), "-m", "sweep=table2", f"objective={','.join(ROWS)}", *tiny],
                    cwd=tmp_path, **env)
    assert (again.stdout + again.stderr).count("nothing to do") == 2, (again.stdout + again.stderr)[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(ROWS)

    # the report: every evaluation spread over 2 processes, Inception features, the test split's NLL
    report = [sys.executable, "-m", "ddpm.report", f"multirun_dir={sweep}", "evaluate=true", "devices=2",
              "seed_sets=1", "fid_samples=4", "nll_images=2", "batch_size=4", "num_boot=10",
              f"sample_args=['fid.inception_weights={weights}']", f"out={tmp_path / 'table2.md'}",
              f"hydra.run.dir={tmp_path / 'report'}"]
    proc = run_python(report[1:], tmp_path, 900, **env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for row in ROWS:
        for k in range(1):  # one seed set: pooling over several is test_report's (digits, 1 process)
            m = json.loads((sweep / row / "eval" / f"fid4_ancestral_seed{k}" / "metrics.json").read_text())
            assert m["fid_extractor"] == "inception-v3-compat" and m["num_samples"] == 4 and m["seed"] == k
            assert math.isfinite(m["fid_4"]) and m["is_4"] >= 1.0 - 1e-9  # exp(mean KL) >= 1, up to rounding
            assert m.get("world_size", 2) == 2
        nll = json.loads((sweep / row / "eval" / "nll_test2" / "nll.json").read_text())
        assert nll["split"] == "test" and nll["num_images"] == 2 and math.isfinite(nll["bpd"])
    table = (tmp_path / "table2.md").read_text()
    assert table.strip() == proc.stdout.strip()
    rows = rows_by_objective(table)
    assert sorted(rows) == sorted(ROWS), table
    for row in ROWS:
        assert rows[row][2] == "3", rows[row]  # trained steps
        assert all(re.search(r"\d", cell) for cell in rows[row][3:6]), rows[row]  # IS, FID, NLL
    assert "pooled over 1 seed set(s) (seeds 0)" in table and "inception" in table.lower()
    assert "- FID simple − eps_vlb_fixed" in table


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_row_whose_processes_slurm_starts_trains_as_one_ddp_job(tmp_path):
    """The SLURM way (hydra/launcher=submitit_slurm with tasks_per_node=devices): SLURM starts one process per
    device, each runs the row's job with the SLURM variables of its task, and Lightning takes the ranks from them
    instead of starting processes. Simulated with the variables srun sets for a 2-task job on one node."""
    data_root = tmp_path / "cifar10"
    write_fake_cifar(data_root, n_per_batch=4, n_test=6)
    sweep = tmp_path / "multirun" / "table2_cifar10"
    cmd = [sys.executable, str(ROOT / "train.py"), "sweep=table2", "hydra.mode=RUN", "objective=simple",
           "trainer=ddp", "trainer.devices=2", *tiny_cifar_run(data_root, sweep)]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
             "DDPM_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=cli_env(**slurm, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    text = "\n".join(outs)
    assert "GLOBAL_RANK: 0" in text and "GLOBAL_RANK: 1" in text and "MEMBER: 2/2" in text, text[-3000:]
    metrics = json.loads((sweep / "simple" / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    # a requeued job (or the sweep rerun) finds the row finished
    again = run_cli([str(ROOT / "train.py"), "-m", "sweep=table2", "objective=simple",
                     *tiny_cifar_run(data_root, sweep)], cwd=tmp_path, OMP_NUM_THREADS="1")
    assert (again.stdout + again.stderr).count("nothing to do") == 1
