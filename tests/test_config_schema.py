"""A setting is written once (issue 27): its YAML line gives its name, default and type, and the one validation
pass (ddpm.core.config.validate_config, ddpm.core.checks) covers it. Composition only (no model, no data): fast."""

from __future__ import annotations

import shutil

import pytest
from hydra.errors import HydraException
from omegaconf.errors import ValidationError

from ddpm.core import cli
from ddpm.core.config import CONF_DIR, compose, register_configs


@pytest.fixture
def scratch_conf(tmp_path):
    """A copy of conf/ whose schemas are registered while the test runs (the real ones again afterwards)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    yield conf
    register_configs(CONF_DIR)


def _error(fn) -> str:
    with pytest.raises((HydraException, ValidationError, ValueError)) as info:
        fn()
    return f"{info.value}\n{info.value.__cause__ or ''}"


def test_one_yaml_line_makes_a_new_setting_usable_and_typed(scratch_conf):
    """The only edit: one line in conf/sample.yaml (and one in a group's YAML). No Python is touched."""
    with open(scratch_conf / "sample.yaml", "a") as f:
        f.write("max_retries: 3              # a new setting\n")
    with open(scratch_conf / "fid" / "default.yaml", "a") as f:
        f.write("crop_fraction: 0.5\n")
    register_configs(scratch_conf)
    cfg = compose("sample", ["paths.output_dir=/unused"], conf_dir=scratch_conf)
    assert cfg.max_retries == 3 and cfg.fid.crop_fraction == 0.5  # the default, from the one line
    cfg = compose("sample", ["paths.output_dir=/unused", "max_retries=7", "fid.crop_fraction=1"], conf_dir=scratch_conf)
    assert cfg.max_retries == 7 and cfg.fid.crop_fraction == 1.0 and isinstance(cfg.fid.crop_fraction, float)
    # validated: a value of another type is refused at composition, naming the key
    assert "max_retries" in _error(lambda: compose("sample", ["max_retries=many"], conf_dir=scratch_conf))
    assert "crop_fraction" in _error(lambda: compose("sample", ["fid.crop_fraction=half"], conf_dir=scratch_conf))
    # the real conf/ does not have it (the scratch copy was the only change)
    register_configs(CONF_DIR)
    assert "max_retries" in _error(lambda: compose("sample", ["max_retries=7"]))



def test_a_key_only_some_options_write_has_its_default_written_once(scratch_conf):
    """objective.loss_weight is written by the min-SNR options only; its default (the paper's unweighted loss) is
    in conf/group_defaults/objective.yaml, so objective=simple keeps `none`. Without that file the schema would
    take whichever option sorts last (min_snr for every objective): the builder refuses it, naming the key."""
    base = ["paths.output_dir=/unused"]
    assert compose("train", [*base, "objective=simple"]).objective.loss_weight == "none"
    assert compose("train", [*base, "objective=mu_vlb_fixed"]).objective.loss_weight == "none"
    assert compose("train", [*base, "objective=v_min_snr"]).objective.loss_weight == "min_snr"
    assert compose("train", [*base, "objective=simple", "objective.loss_weight=min_snr"]).objective.snr_gamma == 5.0
    (scratch_conf / "group_defaults" / "objective.yaml").unlink()
    with pytest.raises(ValueError, match=r"loss_weight.*written by only some options.*group_defaults/objective.yaml"):
        register_configs(scratch_conf)

def test_the_types_come_from_the_yaml_values_or_the_keys_checks():
    """``null`` types an optional string; a key with a check in ddpm.core.checks takes what its check allows (an
    integer, ``auto`` or a list for trainer.devices); lists keep their element type."""
    base = ["paths.output_dir=/unused"]
    assert compose("sample", [*base, "ckpt_path=123"]).ckpt_path == "123"  # str | None: a path, as text
    for devices, want in (("2", 2), ("auto", "auto"), ("[0,1]", [0, 1])):
        assert compose("sample", [*base, f"trainer.devices={devices}"]).trainer.devices == want
    assert "use_ema" in _error(lambda: compose("sample", [*base, "use_ema=maybe"]))  # bool
    assert list(compose("train", [*base, "preemption_signals=[SIGINT,15]"]).preemption_signals) == ["SIGINT", "15"]
    assert "preemption_signals" in _error(lambda: compose("train", [*base, "preemption_signals=SIGINT"]))  # a list
    assert "nan_policy='sometimes' is not valid: expected stop | skip" in _error(
        lambda: compose("train", [*base, "nan_policy=sometimes"]))
    assert "objective.mean_type='noise' is not valid; valid: " in _error(
        lambda: compose("train", [*base, "objective.mean_type=noise"]))


def test_a_checked_int_key_is_printed_as_given():
    """figure.t=5000 (an int key of the paper's 0..1000 scale) is named as typed, not as 5000.0."""
    message = _error(lambda: compose("figures", ["paths.output_dir=/unused", "figure=interpolation", "figure.t=5000"]))
    assert "figure.t=5000 is not valid" in message


@pytest.mark.parametrize("override", ["foo", "num_samples=[1,", "num_samples='a", "num_samples=${oops"])
def test_an_unreadable_override_is_one_error_line(override, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.preflight("sample", [override])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("Error: ")] == [err.splitlines()[0]]
    assert err.startswith(f"Error: cannot read the override {override!r} (") and "KEY=VALUE" in err
    assert len(err.splitlines()) == 2  # the line and the hint (Hydra's parser ran: HYDRA_FULL_ERROR applies)


def test_only_train_links_a_dataset_to_its_recipe():
    """data=NAME brings the training recipe in train.py alone (conf/train.yaml's ``recipe@_global_: ${data}``):
    the other commands take the dataset only, with no opt-out in their YAML."""
    def code(path):
        return "\n".join(ln.split("#")[0] for ln in path.read_text().splitlines())

    linking = sorted(p.name for p in CONF_DIR.rglob("*.yaml") if "recipe@_global_" in code(p))
    assert linking == ["objectives_digits.yaml", "table2_digits.yaml", "train.yaml"]  # train and its sweeps
    for command in ("sample", "nll", "figures", "frontier", "build_refstats"):
        cfg = compose(command, ["paths.output_dir=/unused", "data=cifar10"])
        assert cfg.data._target_.endswith("CIFAR10DataModule") and "optim" not in cfg and "model" not in cfg
    paper = compose("train", ["paths.output_dir=/unused", "objective=simple", "data=cifar10", "trainer.devices=8"])
    assert (paper.model.ch, list(paper.model.ch_mult), paper.model.dropout) == (128, [1, 2, 2, 2], 0.1)
    assert (paper.optim.lr, paper.optim.warmup_steps, paper.trainer.max_steps, paper.data.batch_size) == (
        2e-4, 5000, 800000, 128)
    assert paper.sampler.name == "ancestral" and paper.trainer.devices == 8
    mine = compose("train", ["paths.output_dir=/unused", "data=cifar10", "model=unet_64", "sampler=ddim"])
    assert mine.model.ch_mult != paper.model.ch_mult and mine.sampler.name == "ddim"  # the command line wins


def test_each_recipe_states_its_batch_size_once():
    """One line per training batch: a dataset's in conf/data/NAME.yaml, unless its recipe trains with another
    (table2_digits: 64); no recipe repeats its dataset's."""
    def written(path):
        return [ln for ln in path.read_text().splitlines() if ln.strip().startswith("batch_size:")]

    for data in sorted((CONF_DIR / "data").glob("*.yaml")):
        recipe = CONF_DIR / "recipe" / data.name
        if recipe.is_file():  # (data=checkpoint: the checkpoint's own data, no recipe)
            assert len(written(data)) + len(written(recipe)) == 1, data.stem
    assert len(written(CONF_DIR / "recipe" / "table2_digits.yaml")) == 1
    base = ["paths.output_dir=/unused"]
    assert compose("train", base).data.batch_size == 256  # the quickstart's, as before
    assert compose("train", [*base, "sweep=table2_digits"]).data.batch_size == 64
