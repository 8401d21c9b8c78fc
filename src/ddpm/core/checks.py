"""The checks of every command's settings that a type cannot express (a positive count, a name from a list, a
seed in range), one table per command, run by :func:`ddpm.core.config.validate_config` on the composed config,
so each command refuses a bad value before it starts any work, the same way: the first failing check is one
``ValueError`` naming the key, the value and what is valid.

The types themselves are checked when the config is composed (the schemas of :mod:`ddpm.core.config`), the
sampler's settings by :class:`ddpm.core.config.SamplerConfig`. What only the model or a file can tell (a
checkpoint, the model's T, a feature extractor's weights) is checked where it is loaded, still before any
sampling or training.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from ddpm.core.diffusion import SAMPLERS
from ddpm.core.diffusion.resample import T_SAMPLERS
from ddpm.core.diffusion.schedules import SCHEDULE_NAMES
from ddpm.core.lr import LR_DECAYS

__all__ = ["CHECKS", "COMBINATIONS", "attention_warning", "check_command", "check_values", "group_norm_warning",
           "is_int", "is_num", "suggest"]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


Check = tuple[str, Callable[[Any], bool], str]  # (key, test of its value, what is valid)


def _at_least(low: int, what: str = "") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: is_int(v) and v >= low), f"an integer >= {low}{what}"


def _optional(test: Callable[[Any], bool], valid: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or test(v)), f"null or {valid}"


SPLITS = ("train", "val", "test")
# class-conditional models (beyond the paper): model.num_classes, objective.cond_drop_prob, labels, guidance_scale
NUM_CLASSES: Check = ("model.num_classes", lambda v: v is None or (is_int(v) and v >= 1),
                      "null (unconditional, the paper) or the number of classes K >= 1, e.g. model.num_classes=10")
COND_DROP: Check = ("objective.cond_drop_prob", lambda v: is_num(v) and 0 <= v <= 1,
                    "a probability in [0, 1] (the share of labels replaced by the null token; default 0.1)")
LABELS: Check = ("labels", lambda v: v is None or v in ("balanced", "random") or (is_int(v) and v >= 0) or (
    isinstance(v, list) and len(v) >= 1 and all(is_int(c) and c >= 0 for c in v)),
    "null (balanced for a conditional model), balanced (image i: class i mod K), random, a class index or a "
    "list of class indices, e.g. labels=3 or labels=[0,7]")
GUIDANCE: Check = ("guidance_scale", lambda v: is_num(v) and v >= 0,
                   "a number >= 0 (w: 0 = plain conditional sampling; diffusers' guidance_scale is 1 + w)")
SEED: Check = ("seed", lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32 - 1]")
DEVICE: Check = ("device", lambda v: isinstance(v, str) and (v in ("auto", "cpu") or v.split(":")[0] == "cuda"),
                 "auto (cuda if available), cpu, cuda or cuda:N")
# the devices of train.py (Lightning's Trainer), sample.py and the NLL (Fabric): the values both take (the accelerator
# and precision are theirs to check)
FABRIC: list[Check] = [
    ("trainer.devices", lambda v: (is_int(v) and (v >= 1 or v == -1)) or v == "auto" or (
        isinstance(v, list) and len(v) >= 1 and all(is_int(d) and d >= 0 for d in v)),
     "an integer >= 1, -1 (every device), auto, or a list of device indices such as [0, 1]"),
    ("trainer.num_nodes", *_at_least(1)),
    ("trainer.dist_timeout_s", *_at_least(1, " (seconds)")),
]


def _split(key: str) -> Check:
    return key, lambda v: v in SPLITS, " | ".join(SPLITS)


TRAIN: list[Check] = [
    SEED,
    ("diffusion.schedule", lambda v: v in SCHEDULE_NAMES, " | ".join(SCHEDULE_NAMES)),
    ("diffusion.num_timesteps", *_at_least(1, " (the paper: 1000)")),
    ("optim.lr", lambda v: is_num(v) and v > 0, "a positive number (the paper: 2e-4 for CIFAR-10)"),
    ("optim.betas", lambda v: len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v),
     "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("optim.eps", lambda v: is_num(v) and v > 0, "a positive number (the paper: 1e-8)"),
    ("optim.weight_decay", lambda v: is_num(v) and v >= 0, "a number >= 0"),
    ("optim.warmup_steps", *_at_least(0, " (optimizer steps)")),
    ("optim.lr_decay", lambda v: v in LR_DECAYS, " | ".join(LR_DECAYS) + " (none: the paper's constant lr)"),
    ("optim.ema_decay", lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1] (the paper: 0.9999)"),
    ("optim.t_sampler", lambda v: v in T_SAMPLERS,
     f"one of {sorted(T_SAMPLERS)} (uniform: the paper's; loss_second_moment: importance-sampled t)"),
    ("optim.fused", lambda v: v is None or isinstance(v, bool), "null (fused on CUDA), true or false"),
    *FABRIC,  # trainer.devices / num_nodes: Lightning's own message would come wrapped in Hydra's
    ("trainer.max_steps", lambda v: is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
    ("trainer.max_epochs", lambda v: v is None or (is_int(v) and (v >= 1 or v == -1)),
     "an integer >= 1, -1 or null"),
    ("trainer.max_time", lambda v: v is None or (isinstance(v, str) and len(v.split(":")) == 4),
     'null or "DD:HH:MM:SS", e.g. "00:04:00:00"'),
    ("trainer.accumulate_grad_batches", *_at_least(1)),
    ("trainer.gradient_clip_val", lambda v: v is None or (is_num(v) and v >= 0), "null or a number >= 0"),
    ("trainer.val_check_interval", lambda v: (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
     "an integer >= 1 (training batches) or a fraction of an epoch in (0, 1]"),
    ("trainer.limit_val_batches", lambda v: (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
     "an integer >= 0 (batches) or a fraction in [0, 1]"),
    ("trainer.log_every_n_steps", *_at_least(1)),
    ("data.batch_size", *_at_least(1, " (the GLOBAL batch)")),
    ("data.num_workers", *_at_least(0)),
    ("model.ch", *_at_least(1, " (the paper: 128)")),
    ("model.ch_mult", lambda v: len(v) >= 1 and all(is_int(m) and m >= 1 for m in v),
     "a list of integers >= 1, e.g. [1, 2, 2, 2]"),
    ("model.num_res_blocks", *_at_least(1)),
    ("model.dropout", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("callbacks.fid.metric.ref_split", lambda v: v in SPLITS, " | ".join(SPLITS)),
    ("callbacks.fid.metric.is_splits", *_at_least(1)),
    NUM_CLASSES,
    COND_DROP,
    ("final_samples", *_at_least(0, " (0: none)")),
    ("nan_policy", lambda v: v in ("stop", "skip"), "stop | skip"),
    ("nan_max_consecutive", *_at_least(1)),
]

SAMPLE: list[Check] = [
    SEED,
    ("num_samples", *_at_least(1, " (the number of images to write)")),
    ("batch_size", *_at_least(1, " (images per forward pass on each device)")),
    ("shard_size", *_at_least(1, " (images per shard file)")),
    ("grid_images", *_at_least(0, " (0: no grid)")),
    ("grid_upscale", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1")),
    ("fid_backend", lambda v: v in ("ddpm", "torch-fidelity", "both"), "ddpm | torch-fidelity | both"),
    ("min_fid_samples", *_at_least(2, " (FID needs a covariance)")),
    _split("fid.ref_split"),
    ("fid.is_splits", *_at_least(1)),
    LABELS,
    GUIDANCE,
    *FABRIC,
]

NLL: list[Check] = [
    SEED,
    _split("split"),
    ("max_images", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1 (null: the whole split)")),
    ("batch_size", *_at_least(1, " (images per forward pass on each device)")),
    ("t_batch", *_at_least(1, " (timesteps per forward pass)")),
    *FABRIC,
]

FIGURES: list[Check] = [
    SEED,
    DEVICE,
    ("upscale", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1")),
    ("figure.num_images", *_at_least(1)),
    ("figure.frames", *_at_least(1)),
    ("figure.pair", lambda v: len(v) == 2 and all(is_int(i) and i >= 0 for i in v),
     "two image indices into the split, e.g. [0, 1]"),
    _split("figure.split"),
    ("figure.t", lambda v: is_num(v) and 0 <= v <= 1000, "a time on the paper's scale 0..1000"),
    ("figure.lambdas", *_at_least(1)),
    ("figure.splits", lambda v: len(v) >= 1 and all(is_num(s) and 0 <= s <= 1000 for s in v),
     "a list of times on the paper's scale 0..1000"),
    ("figure.continuations", *_at_least(1)),
    ("figure.seeds", *_at_least(1)),
    ("figure.guidance_scales", lambda v: len(v) >= 1 and all(is_num(w) and w >= 0 for w in v),
     "a non-empty list of guidance weights w >= 0, e.g. [0, 1, 2, 4]"),
]

FRONTIER: list[Check] = [
    SEED,
    DEVICE,
    ("samplers", lambda v: v is None or (len(v) >= 1 and all(s in SAMPLERS for s in v)),
     f"null (every registered sampler) or a list of them: {list(SAMPLERS)}"),
    ("steps", lambda v: len(v) >= 1 and all(is_int(s) and s >= 1 for s in v),
     "a non-empty list of integers >= 1 (network evaluations per image)"),
    ("num_samples", *_at_least(2, " (per seed set)")),
    ("seed_sets", *_at_least(1)),
    ("batch_size", *_at_least(1)),
    ("num_boot", *_at_least(1)),
    ("tolerance", lambda v: is_num(v) and v >= 0, "a number >= 0, e.g. 0.10"),
    LABELS,
    GUIDANCE,
    _split("fid.ref_split"),
    ("fid.is_splits", *_at_least(1)),
]

PROTOCOL = " (null: the protocol of the rows' data)"
REPORT: list[Check] = [
    ("seed_sets", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1" + PROTOCOL)),
    ("fid_samples", *_optional(lambda v: is_int(v) and v >= 2, "an integer >= 2" + PROTOCOL)),
    ("nll_images", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1" + PROTOCOL)),
    ("batch_size", *_at_least(1)),
    ("devices", *_at_least(1)),
    ("num_boot", *_at_least(1)),
    ("sample_args", lambda v: all(isinstance(a, str) and "=" in a for a in v),
     "a list of KEY=VALUE overrides, e.g. [trainer.devices=2]"),
    ("rows", lambda v: v is None or (isinstance(v, list) and all(isinstance(r, str) for r in v)),
     "null (every job) or a list of objective names, e.g. [mu_mse,simple]"),
    ("protocols", lambda v: isinstance(v, dict) and all(isinstance(p, dict) for p in v.values()),
     "a mapping {data name: {seed_sets, fid_samples, nll_images}}"),
]

BUILD_REFSTATS: list[Check] = [
    DEVICE,
    _split("split"),
    ("max_items", *_optional(lambda v: is_int(v) and v >= 1, "an integer >= 1 (null: all)")),
    ("batch_size", *_at_least(1)),
]

# conf/<name>.yaml -> its checks (the name is the schema's, ddpm.core.config.SCHEMAS)
CHECKS: dict[str, list[Check]] = {"train": TRAIN, "sample": SAMPLE, "nll": NLL, "figures": FIGURES,
                                  "frontier": FRONTIER, "report": REPORT, "build_refstats": BUILD_REFSTATS}


def _callbacks(cfg: DictConfig) -> None:
    for name, cb in (cfg.get("callbacks") or {}).items():
        every = cb.get("every_n_steps") if cb is not None and hasattr(cb, "get") else None
        if every is not None and not (is_int(every) and every >= 0):
            raise ValueError(f"callbacks.{name}.every_n_steps={every!r} is not valid: expected an integer >= 0 "
                             "(0: never).")


def _lr_decay(cfg: DictConfig) -> None:
    decay = OmegaConf.select(cfg, "optim.lr_decay", default="none")
    if decay != "none" and OmegaConf.select(cfg, "trainer.max_steps", default=-1) == -1:
        raise ValueError(f"optim.lr_decay={decay} decays the lr to 0 at trainer.max_steps, which is -1 (no limit): "
                         "set trainer.max_steps=N, or optim.lr_decay=none.")


def _fid_count(cfg: DictConfig) -> None:
    if cfg.compute_fid and cfg.num_samples < cfg.min_fid_samples:
        raise ValueError(f"compute_fid=true needs at least min_fid_samples={cfg.min_fid_samples} samples, got "
                         f"num_samples={cfg.num_samples} (the paper's protocol is 50000)")


def _figure_name(cfg: DictConfig) -> None:
    chosen = OmegaConf.select(cfg, "hydra.runtime.choices.figure", default=None)
    name = OmegaConf.select(cfg, "figure.name", default=None)
    if chosen is not None and name != chosen:
        raise ValueError(f"figure.name={name!r} is not valid: it names the figure of figure={chosen}, whose settings "
                         f"these are. Choose the figure with figure=NAME instead (figure={name} if it is one).")


# conf/<name>.yaml -> the checks that read several keys, run after its CHECKS
COMBINATIONS: dict[str, list[Callable[[DictConfig], None]]] = {"train": [_callbacks, _lr_decay], "sample": [_fid_count],
                                                              "figures": [_figure_name]}


def check_command(name: str, cfg: DictConfig) -> None:
    """The checks of the command ``name`` (conf/<name>.yaml) on its composed config ``cfg``."""
    check_values(cfg, CHECKS[name])
    for check in COMBINATIONS.get(name, ()):
        check(cfg)


def check_values(cfg: DictConfig, checks: list[Check]) -> None:
    """Each of ``checks`` whose key is in ``cfg``; a ``ValueError`` naming the key, the value and what is valid
    for the first one that fails."""
    for key, ok, valid in checks:
        value = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=False)
        if value is MISSING or (isinstance(value, str) and value == "???"):
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ValueError(f"{key}={value!r} is not valid: expected {valid}.")


def group_norm_warning(model: Any) -> str | None:
    """A warning when ``model`` has widths that the paper's 32-group GroupNorm does not divide (the UNet then
    uses fewer, smaller groups there: ddpm.core.nets.layers.group_norm), else ``None``."""
    ch, mult = int(model.ch), [int(m) for m in model.ch_mult]
    widths = sorted({ch * m for m in mult} | {ch * a + ch * b for a in [1, *mult] for b in mult})
    odd = [w for w in widths if w % 32]
    if not odd:
        return None
    return (f"model.ch={ch} with ch_mult={mult}: GroupNorm cannot use the paper's 32 groups at widths {odd} "
            "(it uses gcd(32, width) groups there). Use a multiple of 32 for the paper's architecture, e.g. "
            "model.ch=32.")


def attention_warning(model: Any, resolution: int) -> str | None:
    """A warning when ``model.attn_resolutions`` names a size that no level of the UNet has at ``resolution`` (the
    data's), so that no attention is added there (``model=unet_cifar32`` on 8x8 digits, a typo), else ``None``."""
    if "attn_resolutions" not in model or "ch_mult" not in model:
        return None  # not the UNet's settings
    sizes = [int(resolution) // 2**i for i in range(len(model.ch_mult))]
    asked = [int(r) for r in model.attn_resolutions]
    if not (unused := [r for r in asked if r not in sizes]):
        return None
    kept = [r for r in asked if r in sizes]
    return (f"model.attn_resolutions={asked}: no level of this UNet is {unused} wide (at resolution {resolution} with "
            f"ch_mult={list(model.ch_mult)} its levels are {sizes}), so its levels have attention "
            f"{f'only at {kept}' if kept else 'nowhere'} (the middle block always has it). Name sizes from {sizes}, "
            "or [] for none.")


def suggest(word: str, valid: list[str]) -> str:
    """`` Did you mean 'x'?`` for a close match among ``valid``, else ``""``."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
