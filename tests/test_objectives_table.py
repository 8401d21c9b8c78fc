"""Beyond Table 2 (issue 33 item 3): ``sweep=objectives_digits`` and its report: the extended rows (v, min-SNR,
the cosine schedule, the best two combined) read from their job directories, pooled on the seed sets and compared,
paired, with the paper's L_simple row, the same way as Table 2's findings."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_MODEL, run_cli, run_python
from test_report import SIMPLE, _noisy, legend, main, rows_by_objective, write_job, write_seed_set

from ddpm.commands.report.jobs import EXTENDED_ROWS, objective_name
from ddpm.core import cli
from ddpm.core.config import compose

SWEEP = yaml.safe_load((ROOT / "conf" / "sweep" / "objectives_digits.yaml").read_text())
ROWS = SWEEP["hydra"]["sweeper"]["params"]["+row"].split(",")


def test_the_sweep_has_one_job_per_row_and_each_row_differs_only_in_its_option():
    """Six rows, the Table 2 recipe (same step budget), each row's objective and schedule as the issue names it."""
    assert ROWS == ["simple", "v_mse", "simple_min_snr", "v_min_snr", "simple_cosine", "simple_min_snr_cosine"]
    base = compose("train", ["sweep=table2_digits"])
    want = {
        "simple": ("eps", "none", "linear"), "v_mse": ("v", "none", "linear"),
        "simple_min_snr": ("eps", "min_snr", "linear"), "v_min_snr": ("v", "min_snr", "linear"),
        "simple_cosine": ("eps", "none", "cosine"), "simple_min_snr_cosine": ("eps", "min_snr", "cosine"),
    }
    for row in ROWS:
        cfg = compose("train", ["sweep=objectives_digits", f"+row={row}"])
        o = cfg.objective
        assert (o.mean_type, o.loss_weight, cfg.diffusion.schedule) == want[row], row
        assert (o.var_type, o.loss_type, o.snr_gamma) == ("fixed_large", "mse", 5.0)
        for key in ("trainer.max_steps", "optim.lr", "optim.t_sampler", "optim.ema_decay", "data.batch_size",
                    "model.ch", "seed", "sampler.name"):
            assert cfg_get(cfg, key) == cfg_get(base, key), (row, key)
        # the report names the job's row from its config alone
        name, _ = objective_name({k: str(getattr(v, "value", v)) for k, v in o.items()}, cfg.diffusion.schedule)
        assert name == row
    assert set(ROWS) - {"simple"} == {n for n, _ in EXTENDED_ROWS}
    assert cli.preflight("train", ["-m", "sweep=objectives_digits"]) is None


def cfg_get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _job(root, name: str, objective: dict, schedule: str = "linear"):
    job = write_job(root, name, objective, train={"global_step": 8000})
    cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    cfg["diffusion"]["schedule"] = schedule
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return job


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_extended_rows_are_reported_and_paired_against_l_simple(tmp_path):
    """Hand-built rows on the same seeds: a row of real digits is better than L_simple (noisy digits) on every set,
    a noisier row worse; the table lists each extended row with its fields, and finding (5) states each one's paired
    verdict against the paper's row; the Table 2 findings whose rows were not run are left out."""
    from ddpm.core.data.digits import digits_split

    real = digits_split("train")[0].numpy()
    base = [real[np.random.default_rng(k).choice(len(real), 32, replace=False)] for k in range(3)]
    v = {"mean_type": "v", "var_type": "fixed_large", "loss_type": "mse", "loss_weight": "none"}
    rows = {
        ("simple", "linear"): ({**SIMPLE, "loss_weight": "none"}, [_noisy(b, 70, k) for k, b in enumerate(base)]),
        ("v_mse", "linear"): (v, base),  # real digits: better than L_simple
        ("simple_cosine", "cosine"): ({**SIMPLE, "loss_weight": "none"},
                                      [_noisy(b, 120, k) for k, b in enumerate(base)]),  # worse
    }
    for (name, schedule), (objective, sets) in rows.items():
        job = _job(tmp_path, name, objective, schedule)
        for k, images in enumerate(sets):
            write_seed_set(job, k, images)
    table = main([f"multirun_dir={tmp_path}", "num_boot=10"])
    cells = rows_by_objective(table)
    assert cells["v_mse"][0] == "beyond the paper: v prediction, ‖v − v_θ‖²"
    assert cells["v_mse"][1] == "v_mse (v/fixed_large/mse)" and cells["simple_cosine"][1].startswith("simple_cosine (")
    assert cells["simple"][0] == "eps prediction, ‖eps − eps_θ‖² (L_simple)"  # the paper's row, as in Table 2
    assert cells["v_mse"][6:] == ["", "", ""]  # no paper figures beyond the paper
    letters = legend(table)
    assert re.fullmatch(r"[0-9.]+ \(.* over 3 sets\) \[([a-z])\]", cells["v_mse"][4])
    assert "**Rows differ in more than the objective:** diffusion.schedule (cosine, linear)" in table
    assert any(v.startswith("FID: pooled over 3 seed set(s)") for v in letters.values())

    lines = table.splitlines()
    assert any(ln.startswith("(5) *beyond the paper: each option gives better samples than L_simple") for ln in lines)
    assert not any(ln.startswith("(1) ") or ln.startswith("(3) ") for ln in lines)  # no Table 2 rows to compare

    def finding(prefix: str) -> str:
        hits = [ln for ln in lines if ln.startswith(f"- {prefix}")]
        assert len(hits) == 1, (prefix, table)
        return hits[0]

    better = finding("FID v_mse − simple, predicted < 0 (beyond the paper): pooled -")
    assert "(3 seed sets of 32)" in better and better.count("pooled -") == 2  # both extractors see it
    assert re.search(r": \*\*(reproduced|not established)\*\*", better)  # B's set spread is wide at 3 x 32
    worse = finding("FID simple_cosine − simple, predicted < 0 (beyond the paper): pooled +")
    assert worse.endswith("**the opposite**")
    assert finding("digits confidence v_mse − simple, predicted > 0").endswith("**reproduced**")
    # the report's rows= takes the extended rows' names
    only = main([f"multirun_dir={tmp_path}", "num_boot=5", "rows=[simple,v_mse]"])
    assert "simple_cosine" not in only and "- FID v_mse − simple" in only


def test_table2_report_is_unchanged_by_the_extension(tmp_path):
    """A Table 2 sweep's report has no extended rows, no finding (5), and its 'not run' rows as before."""
    job = _job(tmp_path, "simple", SIMPLE)  # an old job: no loss_weight in its config
    write_seed_set(job, 0, np.zeros((8, 1, 8, 8), dtype=np.uint8))
    table = main([f"multirun_dir={tmp_path}", "num_boot=5"])
    assert "(5) " not in table and "beyond the paper: v" not in table
    assert sum("| not run |" in line for line in table.splitlines()) == 5
    assert rows_by_objective(table)["simple"][1] == "simple (eps/fixed_large/mse)"


@pytest.mark.slow
def test_the_extended_table_in_two_commands(tmp_path):
    """The report's two commands on a tiny version (two rows, 3 steps, T=10): the sweep trains each row into
    <sweep dir>/<row>, report evaluate=true samples two seed sets of each, and the report pairs the cosine row
    against L_simple."""
    sweep = tmp_path / "obj"
    tiny = ["trainer.max_steps=3", "diffusion.num_timesteps=10", "final_samples=8", "data.batch_size=16",
            "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=0", *TINY_MODEL]
    run_cli([str(ROOT / "train.py"), "-m", "sweep=objectives_digits", "+row=simple,v_min_snr",
             f"hydra.sweep.dir={sweep}", *tiny], cwd=tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["simple", "v_min_snr"]
    saved = yaml.safe_load((sweep / "v_min_snr" / ".hydra" / "config.yaml").read_text())
    assert (saved["objective"]["mean_type"], saved["objective"]["loss_weight"]) == ("v", "min_snr")
    proc = run_python(["-m", "ddpm.report", f"multirun_dir={sweep}", "evaluate=true", "seed_sets=2",
                       "fid_samples=8", "nll_images=2", "batch_size=8", "num_boot=10", f"hydra.run.dir={tmp_path}/rep"],
                      tmp_path, 900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by_objective(proc.stdout)
    assert rows["v_min_snr"][1] == "v_min_snr (v/fixed_large/mse/min_snr)" and rows["v_min_snr"][2] == "3"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("- FID v_min_snr − simple"))
    assert "(2 seed sets of 8)" in line and re.search(
        r": \*\*(reproduced|the opposite|extractor-dependent|not established)\*\*", line)
