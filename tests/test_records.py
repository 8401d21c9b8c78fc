"""One reading of a run directory's metric files (:mod:`ddpm.services.metrics.records`), shared by the report's table and
the export's model card: the same files give the same figures with the same protocol in both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpm.services.metrics.records import evaluations, sampler_text, train_records, train_summary


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "eval" / "a").mkdir(parents=True)
    (run / "eval" / "a" / "metrics.json").write_text(json.dumps({
        "fid_100_respaced50": 7.5, "is_100_respaced50": 3.25, "is_100_respaced50_std": 0.125, "is_splits": 10,
        "fid_100_respaced50_torch_fidelity": 8.0, "num_samples": 100, "fid_extractor": "ddpm-digits",
        "sampler": {"name": "respaced", "steps": 50, "var_type": "fixed_small"}, "ref_split": "test",
        "use_ema": False}))
    (run / "eval" / "set0").mkdir()
    (run / "eval" / "set0" / "metrics.json").write_text(json.dumps({
        "fid_16": 2.0, "num_samples": 16, "fid_extractor": "ddpm-digits", "seed": 0,
        "sampler": {"name": "ancestral", "steps": 1000}}))
    np.savez(run / "eval" / "set0" / "samples.npz", np.zeros((16, 8, 8, 3), np.uint8))
    (run / "eval" / "nll").mkdir()
    (run / "eval" / "nll" / "nll.json").write_text(json.dumps(
        {"bpd": 4.5, "bpd_sem": 0.25, "num_images": 8, "split": "test", "num_timesteps": 1000}))
    (run / "eval" / "broken").mkdir()
    (run / "eval" / "broken" / "metrics.json").write_text('{"fid_10": 1.')  # half-written: no figure
    (run / "metrics.json").write_text(json.dumps({"global_step": 30, "val/bpd": 5.5, "digits/fid": 9.0,
                                                  "final_samples": 64, "final_sampler": "respaced100"}))
    return run


def test_records_read_every_figure_once_with_its_protocol(tmp_path):
    run = _run(tmp_path)
    evs = evaluations(run)
    assert [e.path.parent.name for e in evs] == ["a", "nll", "set0"]  # the broken file and the summary are not
    assert [e.is_seed_set for e in evs] == [False, False, True]
    recs = {r.source: r for e in evs for r in e.records(run)}
    assert set(recs) == {"eval/a/metrics.json fid_100_respaced50", "eval/a/metrics.json is_100_respaced50",
                         "eval/nll/nll.json bpd", "eval/set0/metrics.json fid_16"}
    fid, inc = recs["eval/a/metrics.json fid_100_respaced50"], recs["eval/a/metrics.json is_100_respaced50"]
    assert (fid.metric, fid.value, inc.metric, inc.value, inc.std) == ("fid", 7.5, "is", 3.25, 0.125)
    assert fid.protocol == ("sample.py, 100 samples, respaced sampler, 50 steps, variance fixed_small, raw weights; "
                            "ddpm-digits features, against the test split")
    nll = recs["eval/nll/nll.json bpd"]
    assert (nll.value, nll.std) == (4.5, 0.25) and "test split, 8 images, all 1000 terms" in nll.protocol
    train = {r.metric: r for r in train_records(train_summary(run), 2)}
    assert train["nll"].value == 5.5 and "2 validation batch(es)" in train["nll"].protocol
    assert train["fid"].value == 9.0 and "respaced sampler, 100 steps" in train["fid"].protocol
    assert sampler_text({"name": "ancestral", "steps": None}) == "ancestral sampler"


def test_the_report_and_the_model_card_show_the_same_figures(tmp_path):
    from ddpm.commands.export import run_metrics
    from ddpm.commands.report.jobs import read_job

    run = _run(tmp_path)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("objective: {mean_type: eps, var_type: fixed_large, loss_type: mse}\n")
    job = read_job(run)
    card = {(value, how.rsplit("; `", 1)[0]) for _, value, how in run_metrics(run)}
    shown = [(f.value, f.protocol.split(": ", 1)[1]) for f in job.fid + job.inception + [job.nll]]
    assert sorted(v for v, _ in shown) == [3.25, 4.5, 7.5]  # the seed set is pooled, the summary superseded
    assert set(shown) <= card  # each with the model card's protocol, word for word
    assert len(card) == 6  # the card: the two evaluations' three figures, the seed set's, the summary's two
    assert len(job.seed_sets) == 1 and next(iter(job.seed_sets.values()))[0].seed == 0
