"""python -m ddpm.frontier: the same seeds with every sampler and step count, scored like sample.py, resumable,
and the table, JSON and plot in the run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.commands.frontier import frontier, summarise
from ddpm.commands.sampling import sample
from ddpm.core.config import compose


def test_summary_finds_the_smallest_steps_within_tolerance():
    def e(sampler, steps, fid, label=None):
        return {"sampler": sampler, "steps": steps, "network_evaluations": steps, "fid": fid,
                "label": label or f"{sampler}{steps}"}

    entries = [e("ancestral", 1000, 10.0, "full_chain"),
               *(e("ddim", s, f) for s, f in ((10, 30.0), (20, 10.9), (50, 10.2))),
               *(e("respaced", s, f) for s, f in ((10, 50.0), (20, 12.0)))]
    s = summarise(entries, 0.10)
    assert s["fid_bound"] == pytest.approx(11.0)
    assert s["smallest_steps_within_tolerance"] == {"ddim": 20, "respaced": None}
    assert s["best_within_evaluations"]["10"] == {"label": "ddim10", "fid": 30.0, "ratio": 3.0}
    assert s["best_within_evaluations"]["20"]["label"] == "ddim20"
    # the established count follows the verdict rule's outcome, not the point estimate
    entries[2]["within_tolerance"] = "not established"   # ddim20: 10.9 <= 11.0, but not established
    entries[3]["within_tolerance"] = "within tolerance"  # ddim50
    entries[2]["vs_chain"] = "extractor-dependent"
    s = summarise(entries, 0.10)
    assert s["smallest_steps_within_tolerance"] == {"ddim": 20, "respaced": None}
    assert s["smallest_steps_established_within_tolerance"] == {"ddim": 50, "respaced": None}
    assert s["best_within_evaluations"]["20"]["vs_chain"] == "extractor-dependent"


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_frontier_on_a_tiny_model(tmp_path_factory, tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path_factory)  # T=10
    run_dir = ckpt.parent.parent
    args = [f"ckpt_path={ckpt}", "samplers=[respaced,ddim]", "steps=[3,5,20]", "num_samples=12", "batch_size=5",
            "seed_sets=2", "num_boot=20", "fid.feature_extractor=digits", "progress=false", "device=cpu"]
    result = frontier(compose("frontier", args))
    out = run_dir / "frontier"
    labels = [e["label"] for e in result["entries"]]
    assert labels == ["full_chain", "respaced3", "ddim3", "respaced5", "ddim5"]  # 20 > T is left out
    assert [e["network_evaluations"] for e in result["entries"]] == [10, 3, 3, 5, 5]
    assert {p.name for p in out.iterdir()} >= {"frontier.json", "frontier.md", "frontier.png", "entries"}
    saved = json.loads((out / "frontier.json").read_text())["entries"]
    assert all(e["n"] == 24 and len(e["fid_sets"]) == 2 for e in saved)
    assert saved[1]["ratio"] == pytest.approx(saved[1]["fid"] / saved[0]["fid"])
    assert saved[1]["fid_diff_ci"][0] <= saved[1]["fid_diff_ci"][1]
    md = (out / "frontier.md").read_text()
    assert "| ddim | 5 |" in md and "smallest steps within tolerance" in md and "pooled over 2 seed sets" in md
    # both digits extractors, named, with KID, FID at infinite n and the class mix; verdicts from the one rule
    verdicts = {"below the chain", "above the chain", "extractor-dependent", "not established"}
    for e in saved:
        assert list(e["extractors"]) == ["ddpm-digits", "ddpm-digits-b"]
        assert e["extractors"]["ddpm-digits"]["fid"] == e["fid"]
        for v in e["extractors"].values():
            assert {"kid", "class_kl", "fid_classmix", "kid_classmix"} <= set(v) and v["fid_inf"] is None  # n=24
        if e["label"] != "full_chain":
            assert e["vs_chain"] in verdicts
            assert e["within_tolerance"] in {"within tolerance", "outside tolerance"} | verdicts - {
                "below the chain", "above the chain"}
    assert "| ddim | 5 | ddpm-digits-b |" in md

    # each set of the full chain is what sample.py draws and scores for that seed, and the pooled FID is the FID
    # of both sets' images together
    images, pooled = [], []
    for k in range(2):
        m = sample(sample_cfg(ckpt, tmp_path / f"s{k}", "num_samples=12", "compute_fid=true", f"seed={k}",
                              "fid.feature_extractor=digits"))
        # n < d: the exact low-rank trace, from sigma in sample.py and from the features in the frontier
        assert m["fid_12"] == pytest.approx(saved[0]["fid_sets"][k], rel=1e-7)
        with np.load(tmp_path / f"s{k}" / "samples.npz") as z:
            images.append(z["arr_0"])
        with np.load(out / "entries" / "full_chain" / f"set{k}.npz") as z:
            np.testing.assert_array_equal(z["images"].transpose(0, 2, 3, 1), images[-1][..., :1])
            pooled.append(z["images"])
    # the pooled FID is sample.py's scorer (ddpm.services.metrics.samples, not the frontier's pooling) on the 24 images of
    # both sets together; the mean of the per-set FIDs (what a frontier that did not pool would report) is not it
    from ddpm.services.loading import load_model, model_datamodule
    from ddpm.services.metrics.samples import load_extractor, score_samples

    cfg = compose("frontier", args)
    datamodule = model_datamodule(load_model(ckpt, None, True), None, "test")
    extractor = load_extractor(cfg.fid, datamodule.name, "cpu")
    union = score_samples(np.concatenate(pooled), fid_cfg=cfg.fid, extractor=extractor, datamodule=datamodule,
                          cache_dir=cfg.paths.cache_dir)  # fmt: skip
    assert saved[0]["fid"] == pytest.approx(union["fid_24"], rel=1e-7)
    assert abs(saved[0]["fid"] - np.mean(saved[0]["fid_sets"])) > 1e-3 * saved[0]["fid"]

    # resumable: a finished set is not sampled again, a missing one is
    (out / "entries" / "ddim5" / "set1.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in (out / "entries").rglob("*.npz")}
    again = frontier(compose("frontier", args))
    rewritten = {p.relative_to(out).as_posix() for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert rewritten == {"entries/ddim5/set1.npz"} and (out / "entries" / "ddim5" / "set1.json").is_file()
    assert [e["fid"] for e in again["entries"]] == pytest.approx([e["fid"] for e in result["entries"]])

    # the restating command: the same command on a finished directory rescores the stored samples and samples
    # nothing (every extractor's figures and every verdict come back the same)
    import ddpm.commands.frontier as frontier_module

    def no_sampling(*a, **k):
        raise AssertionError("the restating run sampled")

    monkeypatch.setattr(frontier_module, "sample_set", no_sampling)
    restated = frontier(compose("frontier", args))
    for e, r in zip(again["entries"], restated["entries"]):
        assert r["extractors"] == e["extractors"] and r.get("vs_chain") == e.get("vs_chain")


@pytest.mark.slow  # a tiny checkpoint: over 2 s on 2 cores
def test_step_counts_all_above_t_are_refused_before_the_full_chain(tmp_path_factory, tmp_path, capsys):
    """steps=[5000] on a T=10 model used to sample the whole reference chain and then compare nothing with it."""
    ckpt = tiny_checkpoint(tmp_path_factory)  # T=10
    args = [f"ckpt_path={ckpt}", "samplers=[ddim]", "num_samples=12", "progress=false", "device=cpu",
            f"out_dir={tmp_path / 'f'}"]
    with pytest.raises(ValueError, match=r"^steps=\[20, 5000\]: every step count is above the model's T=10, .* "
                                         r"pass step counts up to 10"):
        frontier(compose("frontier", [*args, "steps=[5000,20]"]))
    assert not (tmp_path / "f").exists()  # refused before any sampling


def test_frontier_includes_every_registered_sampler_by_default():
    from ddpm.commands.frontier import entries_for
    from ddpm.core.diffusion import SAMPLERS

    cfg = compose("frontier", ["ckpt_path=x"])
    names = [s.name for s in entries_for(cfg, 1000)]
    assert names[0] == "ancestral" and set(names[1:]) == {n for n in SAMPLERS if n != "ancestral"}
    assert {"dpm_solver_sde", "restart"} <= set(names) and len(names) == 1 + 5 * (len(SAMPLERS) - 1)
    assert cfg.seed_sets * cfg.num_samples >= 1536
