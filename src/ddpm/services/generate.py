"""Seeds -> images: the one service that runs a sampler (:class:`~ddpm.core.config.SamplerConfig`) for
``sample.py``, the final samples and grids of ``train.py``, the FID callback and the frontier.

Image ``i`` of a run with base seed ``s`` is drawn from its own generator seeded by
``image_seeds(s, i, i+1)``, so a set of samples is identical whatever the batch size, the number of devices
or the order in which shards are produced. The algorithms themselves are in :mod:`ddpm.core.diffusion.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddpm.core.config import SamplerConfig
from ddpm.core.diffusion import GaussianDiffusion, ModelFn, SeededNoise
from ddpm.core.diffusion.guidance import guided
from ddpm.core.seeds import derive_seed, image_seeds

__all__ = ["check_labels", "class_labels", "condition", "diffusion_for_sampler", "generate", "sampler_model_fn",
           "seeds_for"]


def skips_steps(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> bool:
    """Whether ``sampler`` runs on a respaced chain (a respacing sampler with fewer steps than T)."""
    return sampler.spec.respaces and sampler.steps is not None and int(sampler.steps) < diffusion.num_timesteps


def diffusion_for_sampler(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> GaussianDiffusion:
    """The diffusion to sample with: the variance override applied, and a mu network read as x_0 on a respaced
    chain.

    A mu-tilde network (``mean_type=mu``) predicts the mean of ONE reverse step of the original chain; when the
    sampler jumps over timesteps the network's output is read as the x_0 it implies (:func:`_mu_as_x0`), so
    the diffusion predicts x_0 (``mean_type=x0``): the same x_0 that the full chain derives. The sampler itself
    respaces it to its timesteps.
    """
    var_type = sampler.var_type or diffusion.var_type.value
    mean_type = diffusion.mean_type
    if skips_steps(diffusion, sampler) and mean_type.value == "mu":
        mean_type = "x0"
    if var_type != diffusion.var_type.value or mean_type != diffusion.mean_type:
        diffusion = GaussianDiffusion(
            diffusion.betas_np,
            mean_type=mean_type,
            var_type=var_type,
            # sampling uses no loss; the one given must fit the variance (hybrid needs a learned one)
            loss_type="kl" if var_type in ("learned", "learned_range") else
            "mse" if diffusion.loss_type.value == "hybrid" else diffusion.loss_type,
            timestep_map=diffusion.timestep_map_np,
        )
    return diffusion


def sampler_model_fn(model_fn: ModelFn, diffusion: GaussianDiffusion, diff: GaussianDiffusion,
                     channels: int) -> ModelFn:
    """``model_fn`` as the sampler's diffusion ``diff`` (:func:`diffusion_for_sampler`) reads it: a mu network
    as x_0, a learned variance's mean channels only. Wraps once; the sampler never knows."""
    if diffusion.mean_type.value == "mu" and diff.mean_type.value == "x0":
        model_fn = _mu_as_x0(model_fn, diffusion)
    if diffusion.var_type.is_learned and not diff.var_type.is_learned:
        model_fn = _mean_channels(model_fn, channels)
    return model_fn


@torch.no_grad()
def generate(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    image_shape: Sequence[int],
    sampler: SamplerConfig | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    labels: Tensor | None = None,
    guidance_scale: float = 0.0,
    num_classes: int | None = None,
) -> Tensor:
    """Sample one image per seed; returns float images in [-1, 1], shape ``[len(seeds), C, H, W]``.

    ``model_fn(x, t) -> Tensor`` is the network or any wrapper of it with that signature (e.g. classifier-free
    guidance that doubles the batch inside): it is called with ``x`` of shape ``[len(seeds), C, H, W]`` and
    ``t`` a ``long`` tensor of ``len(seeds)`` original code indices, and returns the network's output for them.

    A class-conditional model: ``model_fn(x, t, y)``, ``labels`` the ``[len(seeds)]`` classes, ``guidance_scale``
    the classifier-free guidance weight w and ``num_classes`` its K (the null token); they are bound into the
    model function once (:func:`ddpm.core.diffusion.guidance.guided`), so every sampler runs them unchanged.
    """
    sampler = sampler or SamplerConfig(name="ancestral")
    if labels is not None:
        if num_classes is None:
            raise ValueError("labels need the model's num_classes (its null token)")
        learned = diffusion.var_type.is_learned
        model_fn = guided(model_fn, torch.as_tensor(labels, dtype=torch.long), guidance_scale, int(num_classes),
                          int(image_shape[0]) if learned else None)
    diff = diffusion_for_sampler(diffusion, sampler).to(device)
    model_fn = sampler_model_fn(model_fn, diffusion, diff, int(image_shape[0]))
    noise = SeededNoise(list(seeds), device=device)
    return sampler.spec.sample(diff, model_fn, (len(seeds), *image_shape), steps=sampler.steps, noise=noise,
                               clip_denoised=sampler.clip_denoised, progress=progress, device=device,
                               **sampler.params)


def _mu_as_x0(model_fn, diffusion: GaussianDiffusion):
    """A mu-tilde network as an x_0 network: ``x_0 = (mu - coef2_t x_t) / coef1_t`` with the coefficients of
    the chain it was trained on, at the (original) timestep it is given; variance channels pass through."""
    if not (diffusion.timestep_map_np == range(diffusion.num_timesteps)).all():
        raise ValueError("a mu network is read as x_0 on the chain it was trained on (no timestep map)")

    def fn(x: Tensor, t: Tensor) -> Tensor:
        out = model_fn(x, t)
        c = x.shape[1]
        x0 = diffusion.predict_xstart_from_xprev(x, t, out[:, :c])
        return torch.cat([x0, out[:, c:]], dim=1)

    return fn


def _mean_channels(model_fn, channels: int):
    """A learned-variance network sampled with a fixed variance (``sampler.var_type=fixed_*``): its mean
    channels only."""

    def fn(x: Tensor, t: Tensor) -> Tensor:
        return model_fn(x, t)[:, :channels]

    return fn


def seeds_for(base_seed: int, start: int, stop: int) -> list[int]:
    """Per-image seeds for images ``start .. stop-1`` of a run with ``base_seed``."""
    return image_seeds(base_seed, start, stop)


def class_labels(spec, seed: int, start: int, stop: int, num_classes: int) -> Tensor:
    """int64 classes of images ``start .. stop-1``: image ``i``'s depends on ``(spec, seed, i)`` only.

    ``spec``: ``None`` or ``"balanced"`` (``i mod K``), ``"random"`` (uniform, drawn from ``(seed, i)``), a class
    index, or a list of them (image ``i`` gets ``spec[i mod len]``).
    """
    idx = range(start, stop)
    if spec is None or spec == "balanced":
        out = [i % num_classes for i in idx]
    elif spec == "random":
        out = [int(torch.randint(num_classes, (), generator=torch.Generator().manual_seed(derive_seed(seed, 5, i))))
               for i in idx]
    elif isinstance(spec, int):
        out = [int(spec)] * len(idx)
    else:
        spec = [int(c) for c in spec]
        out = [spec[i % len(spec)] for i in idx]
    return torch.tensor(out, dtype=torch.long)


def condition(num_classes: int | None, start: int, stop: int, spec=None, seed: int = 0,
              guidance_scale: float = 0.0) -> dict:
    """:func:`generate`'s keyword arguments for images ``start .. stop-1``: none for an unconditional model; for a
    class-conditional one (``num_classes`` K) their labels (:func:`class_labels` of ``spec``, ``None``: balanced,
    as ``sample.py``'s default) and the guidance weight. Without them a conditional network samples its null token
    (the unconditional half of classifier-free guidance), not the model ``sample.py`` samples."""
    if not num_classes:
        return {}
    return {"labels": class_labels(spec, seed, start, stop, int(num_classes)), "guidance_scale": float(guidance_scale),
            "num_classes": int(num_classes)}


def check_labels(spec, guidance_scale: float, num_classes: int | None) -> None:
    """Refuse, before any image is sampled, labels or guidance that this model cannot take."""
    if num_classes is None:
        if spec is not None:
            raise ValueError(f"labels={spec!r}: this model is unconditional (trained without model.num_classes); "
                             "drop labels=, or sample a model trained with model.num_classes=K")
        if float(guidance_scale) != 0.0:
            raise ValueError(f"guidance_scale={guidance_scale}: this model is unconditional (trained without "
                             "model.num_classes), so there is nothing to guide; drop guidance_scale= (or set 0)")
        return
    if float(guidance_scale) < 0:
        raise ValueError(f"guidance_scale={guidance_scale} must be >= 0 (w; 0 = plain conditional sampling)")
    given = [] if spec in (None, "balanced", "random") else [spec] if isinstance(spec, int) else list(spec)
    if bad := [c for c in given if not 0 <= int(c) < num_classes]:
        raise ValueError(f"labels={spec!r}: class {bad[0]} is outside 0..{num_classes - 1} (this model has "
                         f"K={num_classes} classes); valid: balanced, random, or class indices 0..{num_classes - 1}")
