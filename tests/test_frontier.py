"""python -m ddpm.frontier: the same seeds with every sampler and step count, scored like sample.py, resumable,
and the table, JSON and plot in the run directory."""

from __future__ import annotations

import json

import pytest
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.config import compose
from ddpm.frontier import frontier, summarise
from ddpm.sampling import sample


def test_summary_finds_the_smallest_steps_within_tolerance():
    entries = [{"sampler": "ancestral", "steps": 1000, "fid": 10.0},
               *({"sampler": "ddim", "steps": s, "fid": f} for s, f in ((10, 30.0), (20, 10.9), (50, 10.2))),
               *({"sampler": "respaced", "steps": s, "fid": f} for s, f in ((10, 50.0), (20, 12.0)))]
    s = summarise(entries, 0.10)
    assert s["fid_bound"] == pytest.approx(11.0)
    assert s["smallest_steps_within_tolerance"] == {"ddim": 20, "respaced": None}


def test_frontier_on_a_tiny_model(tmp_path_factory, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path_factory)  # T=10
    run_dir = ckpt.parent.parent
    args = [f"ckpt_path={ckpt}", "samplers=[respaced,ddim]", "steps=[3,5,20]", "num_samples=12", "batch_size=5",
            "fid.feature_extractor=digits", "progress=false", "device=cpu"]
    with pytest.warns(UserWarning, match="not comparable"):
        result = frontier(compose("frontier", args))
    out = run_dir / "frontier"
    labels = [e["label"] for e in result["entries"]]
    assert labels == ["full_chain", "respaced3", "respaced5", "ddim3", "ddim5"]  # 20 > T is left out
    assert [e["network_evaluations"] for e in result["entries"]] == [10, 3, 5, 3, 5]
    assert {p.name for p in out.iterdir()} >= {"frontier.json", "frontier.md", "frontier.png", "entries"}
    assert json.loads((out / "frontier.json").read_text())["entries"][1]["scores"]["fid_12_respaced3"] > 0
    md = (out / "frontier.md").read_text()
    assert "| ddim | 5 |" in md and "smallest steps within tolerance" in md

    # the full chain scores exactly what sample.py scores for the same seeds
    with pytest.warns(UserWarning):
        m = sample(sample_cfg(ckpt, tmp_path / "s", "num_samples=12", "compute_fid=true",
                              "fid.feature_extractor=digits"))
    assert m["fid_12"] == pytest.approx(result["entries"][0]["fid"], rel=1e-9)

    # resumable: a finished entry is not sampled again, a missing one is
    (out / "entries" / "ddim5.json").unlink()
    capsys.readouterr()
    with pytest.warns(UserWarning):
        again = frontier(compose("frontier", args))
    printed = capsys.readouterr().out
    assert "frontier: ddim5:" in printed and "frontier: respaced3:" not in printed
    assert [e["fid"] for e in again["entries"]] == pytest.approx([e["fid"] for e in result["entries"]])
