"""The LightningModule: glue between the UNet (:mod:`ddpm.core.nets`) and the diffusion math (:mod:`ddpm.core.diffusion`).

* ``net`` holds the raw (trained) weights, ``ema`` an exponential moving average of them (decay 0.9999 per
  optimizer step, from step 0, shadows starting at the initial weights, as the official code). Both live in the
  module's ``state_dict``, so every checkpoint carries raw and EMA weights side by side and a resume is exact.
* Validation, sampling and exported weights use ``ema`` by default; training never touches it, so the raw
  weights are the same before and after a validation (no swapping).
* ``t`` is drawn uniformly from {0, ..., T-1} (code index; paper time t+1); ``optim.t_sampler=loss_second_moment``
  (beyond the paper, opt-in) importance-samples it instead (:mod:`ddpm.core.diffusion.resample`).
* Class-conditional (``model.num_classes=K``, beyond the paper): batches are ``[x, y]``; each label is replaced
  by the null token ``K`` with probability ``objective.cond_drop_prob`` (classifier-free guidance's label
  dropout), the coins drawn from ``(seed, step, micro-batch, rank)`` like the rest of the step's randomness.
  Validation scores the conditional model on its true labels.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ddpm.core.diffusion import GaussianDiffusion
from ddpm.core.diffusion.guidance import with_labels
from ddpm.core.diffusion.resample import make_t_sampler
from ddpm.core.diffusion.types import VarType
from ddpm.core.lr import lr_schedule
from ddpm.core.seeds import derive_seed


def build_net(model: Mapping[str, Any], image_shape: tuple[int, int, int], var_type: str) -> torch.nn.Module:
    """Instantiate the network from its config (``_target_`` + kwargs), sized for the data and objective.

    The output has twice the image channels when the variance is learned (``learned``/``learned_range``).
    """
    kwargs = dict(model)
    target = kwargs.pop("_target_", "ddpm.core.nets.UNet")
    module_name, _, cls_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"square images only, got image_shape={tuple(image_shape)}")
    out_channels = 2 * channels if VarType(var_type).is_learned else channels
    return cls(in_channels=channels, out_channels=out_channels, resolution=height, **kwargs)


def build_diffusion(diffusion: Mapping[str, Any], objective: Mapping[str, Any]) -> GaussianDiffusion:
    return GaussianDiffusion.from_config(
        schedule=diffusion["schedule"],
        num_timesteps=int(diffusion["num_timesteps"]),
        mean_type=objective["mean_type"],
        var_type=objective["var_type"],
        loss_type=objective["loss_type"],
        # beyond the paper (issue 33), opt-in; a checkpoint from before has none of these keys: the paper's loss
        **{k: objective[k] for k in ("loss_weight", "snr_gamma", "p2_k", "p2_gamma") if k in objective},
    )


class DiffusionModule(L.LightningModule):
    """DDPM training system: UNet + GaussianDiffusion + EMA, trained with the configured Table 2 objective.

    :param model: network config (``_target_`` and constructor kwargs but in/out channels and resolution).
    :param diffusion: ``{schedule, num_timesteps}``.
    :param objective: ``{mean_type, var_type, loss_type}`` (strings), and optionally the loss weight
        (``loss_weight``, ``snr_gamma``, ``p2_k``, ``p2_gamma``; absent: the paper's unweighted loss).
    :param optim: ``{lr, betas, eps, weight_decay, warmup_steps, ema_decay, fused, t_sampler}``, all required (the
        values and their meaning: conf/optim/adam.yaml; ``t_sampler``: :mod:`ddpm.core.diffusion.resample`), and
        optionally ``lr_decay`` (:mod:`ddpm.core.lr`; absent: ``none``, the paper's constant lr).
    :param image_shape: ``(C, H, W)`` of the data.
    :param seed: the run's seed; each training batch's randomness (t, noise, dropout) is drawn from
        ``(seed, step, micro-batch, rank)``.
    :param nan_policy: a non-finite loss or gradient: ``stop`` the run, or ``skip`` the optimizer step (and stop
        after ``nan_max_consecutive`` in a row). Under DDP all ranks decide together, on every rank's loss and
        the all-reduced gradients: they skip the same steps or all stop with the same message. These three are
        ``conf/train.yaml``'s top-level keys.
    :param channels_last: run the network in channels_last memory format (a GPU speed option).
    :param compile: ``None`` (eager) or ``torch.compile`` keyword arguments (``{"backend", "mode"}``) for the
        training network, compiled in place with ``nn.Module.compile``: parameters, state-dict keys and
        checkpoints are those of the eager network. The EMA copy (sampling, validation) stays eager.
    :param config: the run's full resolved config, written into every checkpoint as ``checkpoint["cfg"]`` (not
        a hyperparameter: the checkpoint's ``hyper_parameters`` rebuild the module, ``cfg`` documents the run).
    """

    def __init__(
        self,
        model: dict,
        diffusion: dict,
        objective: dict,
        optim: dict,
        image_shape: tuple[int, int, int] | list[int],
        *,
        seed: int,
        nan_policy: str,
        nan_max_consecutive: int,
        channels_last: bool = False,
        val_seed: int = 1234,
        compile: dict | None = None,
        config: dict | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["config", "class_names"])
        self.seed = int(seed)
        self.nan_policy = str(nan_policy)
        self.nan_max_consecutive = int(nan_max_consecutive)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.net = build_net(model, self.image_shape, objective["var_type"])
        self.num_classes: int | None = getattr(self.net, "num_classes", None)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.cond_drop_prob = 0.0
        if self.num_classes is not None:
            if "cond_drop_prob" not in objective:
                raise ValueError("a class-conditional model (model.num_classes) needs objective.cond_drop_prob")
            self.cond_drop_prob = float(objective["cond_drop_prob"])
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.diffusion = build_diffusion(diffusion, objective)
        self.ema_decay = float(optim["ema_decay"])
        t_sampler = optim["t_sampler"]  # uniform: the paper's torch.randint below, unchanged
        self.t_sampler = None if t_sampler == "uniform" else make_t_sampler(t_sampler, self.diffusion.num_timesteps)
        self.register_buffer("ema_num_updates", torch.zeros((), dtype=torch.long))
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.ema.to(memory_format=torch.channels_last)
        if compile is not None:
            self.net.compile(**{k: v for k, v in dict(compile).items() if v is not None})
        # one (x_t, t): Lightning's model summary counts the network's FLOPs per image with it
        self.example_input_array = (torch.zeros(1, *self.image_shape), torch.zeros(1, dtype=torch.long))
        self.config = config
        self._nan_streak = 0
        self._skip_ema = False  # set when nan_policy=skip drops the current optimizer step
        self._last_loss: float = 0.0  # the backpropagated loss (a non-finite one wins within a step's window)
        self._window_start = True

    # ------------------------------------------------------------------ inference
    def model_fn(self, use_ema: bool = True, labels: Tensor | None = None):
        """The network as the diffusion code expects it: ``fn(x_t, t) -> output`` (EMA weights by default).

        A conditional network's function also takes labels, ``fn(x_t, t, y)`` (``None``: the null token);
        ``labels`` binds them, giving ``fn(x_t, t)`` (:func:`ddpm.core.diffusion.guidance.with_labels`).
        """
        net = self.ema if use_ema else self.net
        fn = net
        if self.channels_last:
            def fn(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
                return net(x.contiguous(memory_format=torch.channels_last), t, y)

        return fn if labels is None else with_labels(fn, labels)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(x_t, t, y) if y is not None else self.net(x_t, t)

    def split_batch(self, batch: Tensor | list | tuple) -> tuple[Tensor, Tensor | None]:
        """``(images, labels)`` of a batch: ``[x, y]`` for a conditional model, a plain tensor otherwise."""
        if isinstance(batch, list | tuple):
            x, y = batch
            return x, (y if self.num_classes is not None else None)
        if self.num_classes is not None:
            raise ValueError("a class-conditional model (model.num_classes) needs labelled batches [x, y]")
        return batch, None

    def drop_labels(self, y: Tensor, batch_idx: int) -> Tensor:
        """Replace each label by the null token with probability ``cond_drop_prob``; the coins come from
        ``(seed, step, micro-batch, rank)`` (a CPU generator: the same on every device type and on a resume)."""
        if self.cond_drop_prob <= 0.0:
            return y
        gen = torch.Generator().manual_seed(derive_seed(self.seed, 3, self.global_step, batch_idx, self.global_rank))
        drop = (torch.rand(y.shape[0], generator=gen) < self.cond_drop_prob).to(y.device)
        return torch.where(drop, torch.full_like(y, int(self.num_classes)), y)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x_start, y = self.split_batch(batch)
        num_t = self.diffusion.num_timesteps
        if self.t_sampler is None:
            t = torch.randint(0, num_t, (x_start.shape[0],), device=x_start.device)
        else:
            t, weights = self.t_sampler.sample(x_start.shape[0], x_start.device)
        y = None if y is None else self.drop_labels(y, batch_idx)
        terms = self.diffusion.training_losses(self.model_fn(use_ema=False, labels=y), x_start, t)
        if self.t_sampler is None:
            loss = terms["loss"].mean()
        else:  # importance weights 1/(T p_t): the same expected loss; the history sees the unweighted losses
            self.t_sampler.update(t, terms["loss"].detach())
            loss = (terms["loss"] * weights).mean()
        batch_size = x_start.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)  # every step: the progress bar shows it
        if not self._logs_this_step():
            return loss
        for key in ("mse", "vb"):
            if key in terms and key != "loss":
                self.log(f"train/{key}", terms[key].mean(), batch_size=batch_size)
        # The loss by quarter of the t range (improved-diffusion's loss_q0..q3): where the error sits. All four
        # are logged at every logged step, NaN for a quarter with no example in the batch: Lightning writes a
        # key's last logged value again in later rows, so skipping it would repeat a stale value from an older
        # batch.
        quarter = (t * 4) // num_t
        per_example = terms["loss"].detach()
        for q in range(4):
            mask = quarter == q
            count = int(mask.sum())
            value = per_example[mask].mean() if count else torch.full((), float("nan"), device=per_example.device)
            self.log(f"train/loss_q{q}", value, batch_size=max(count, 1))
        return loss

    def _logs_this_step(self) -> bool:
        """Whether this optimizer step's diagnostics (mse/vb, quartile losses, gradient norm) are logged.

        Lightning writes a step's values to the loggers only every ``trainer.log_every_n_steps`` steps, but each
        ``self.log`` costs Python work at every step (~10% of a quickstart step). The diagnostics are therefore
        logged on the steps Lightning writes (its own rule) and on the last step of ``max_steps`` (so
        ``metrics.json`` holds the final step's values): the CSV/W&B rows are the same as logging at every step.
        """
        trainer = self.attached_trainer()
        if trainer is None:
            return True
        step = self.global_step + 1  # this step, counted after its update (Lightning's rule for its log rows)
        every = trainer.log_every_n_steps
        if (every and step % every == 0) or trainer.should_stop or trainer.fast_dev_run:
            return True
        return 0 < trainer.max_steps <= step

    def attached_trainer(self) -> L.Trainer | None:
        """The Trainer running this module, ``None`` outside one (a module used on its own)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def on_before_backward(self, loss: Tensor) -> None:
        # The loss that is backpropagated (what training_step returned, over accumulate_grad_batches); a
        # non-finite one anywhere in the accumulation window is kept for the check before the optimizer step.
        value = float(loss.detach())
        if math.isfinite(self._last_loss) or not math.isfinite(value) or self._window_start:
            self._last_loss = value
        self._window_start = False

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._window_start = True
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:
            return
        # One foreach call for the per-tensor norms (bitwise the values of one vector_norm call per tensor), then
        # the norm of those: at every step, for the non-finite check.
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g.float() for g in grads])))
        if self._logs_this_step():
            self.log("train/grad_norm", norm, batch_size=1)
        # Under DDP the gradients (so their norm) are all-reduced, the same on every rank, but each rank has its
        # own loss: every rank gets all the losses, so all decide alike (skip the same step, or all stop).
        losses = [self._last_loss]
        trainer = self.attached_trainer()
        if trainer is not None and trainer.world_size > 1:
            losses = self.all_gather(torch.tensor(self._last_loss, device=self.device)).flatten().tolist()
        if not torch.isfinite(norm) or not all(math.isfinite(v) for v in losses):
            self._handle_nonfinite(norm, losses)
        else:
            self._nan_streak = 0

    def _handle_nonfinite(self, norm: Tensor, losses: list[float]) -> None:
        policy = self.nan_policy
        step = self.global_step
        what = f"loss={losses[0]!r}" if len(losses) == 1 else (
            "loss " + ", ".join(f"{v!r} on rank {r}" for r, v in enumerate(losses)))
        what += f", gradient norm={float(norm)!r}"
        hint = (
            "Likely causes: a learning rate too high for this model/batch, a learned variance diverging "
            "(objective *_learned, 'unstable' in the paper's Table 2), fp16 overflow (use bf16-mixed), or "
            "non-finite input data."
        )
        if policy == "stop":
            raise FloatingPointError(
                f"Non-finite training step at global step {step}: {what}. The optimizer step was NOT applied "
                f"and no checkpoint with non-finite weights is written. {hint} Set nan_policy=skip to skip "
                "such steps instead."
            )
        self._nan_streak += 1
        limit = self.nan_max_consecutive
        if self._nan_streak > limit:
            raise FloatingPointError(
                f"{self._nan_streak} consecutive non-finite steps up to global step {step} ({what}). {hint}"
            )
        self.print(f"[ddpm] skipping optimizer step at global step {step}: {what}")
        for p in self.net.parameters():
            p.grad = None  # Adam skips parameters without a gradient: the weights and moments stay as they were
        self._skip_ema = True  # and the EMA stays too (no update toward unchanged weights, no count)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # One EMA update per optimizer step (so also under gradient accumulation), right after the step and
        # before any callback's on_train_batch_end: grids, FID and checkpoints of step k see EMA after step k.
        # A step skipped by nan_policy=skip (set in on_before_optimizer_step, inside super()) updates nothing.
        if self._skip_ema:
            self._skip_ema = False
            return
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.ema_decay
        ema_params = list(self.ema.parameters())
        net_params = list(self.net.parameters())
        torch._foreach_lerp_(ema_params, net_params, 1.0 - decay)
        for b_ema, b_net in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b_net)
        self.ema_num_updates += 1

    # Training randomness is a function of (seed, step, micro-batch, rank), not of the RNG's history. Lightning
    # restores no random state, and a resume does not replay what happened before the checkpoint (the
    # validation at that step, the dataloader iterators it built): re-seeding the global torch RNG before every
    # training batch (t, noise, dropout) makes "N steps + ckpt_path=last + N steps" draw exactly what the
    # uninterrupted 2N steps draw, and the run independent of the validation schedule. Ranks get different
    # streams (different t/noise). The data order and flips are the sampler's, from (seed, epoch):
    # ddpm.core.data.EpochSampler.
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derive_seed(self.seed, 1, self.global_step, batch_idx, self.global_rank))

    # ------------------------------------------------------------------ validation / test
    def on_validation_epoch_start(self) -> None:
        # The same t and noise at every validation, so the curve compares like with like.
        self._val_generator = torch.Generator(device=self.device).manual_seed(int(self.hparams.val_seed))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._bound_step(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        if not hasattr(self, "_val_generator"):
            self.on_validation_epoch_start()
        self._bound_step(batch, "test")

    @torch.no_grad()
    def _bound_step(self, batch: Tensor, stage: str) -> None:
        """Unbiased estimate of the bound L in bits/dim with EMA weights (clipped x_0, as the official NLL):
        prior L_T + the decoder term L_0 of every image + (T - 1) * L_t at one stratified t in {1..T-1}.

        L_0 is computed exactly for every image because it is the largest and most variable term: drawing it
        with probability 1/T and weight T made the estimate jump by tens of bits/dim between validations.
        ``<stage>/bpd_decoder`` and ``<stage>/bpd_rate`` log the two parts (the paper's distortion and rate).
        """
        x_start, y = self.split_batch(batch)
        n = x_start.shape[0]
        num_t = self.diffusion.num_timesteps
        gen = self._val_generator
        model_fn = self.model_fn(use_ema=True, labels=y)
        zeros = torch.zeros(n, dtype=torch.long, device=self.device)
        noise0 = torch.randn(x_start.shape, generator=gen, device=self.device)
        x_1 = self.diffusion.q_sample(x_start, zeros, noise=noise0)
        decoder = self.diffusion.vb_terms_bpd(model_fn, x_start, x_1, zeros, clip_denoised=True)["output"]
        bpd = self.diffusion.prior_bpd(x_start) + decoder
        if num_t > 1:
            # Stratified t over the batch: lower variance than i.i.d. draws, still unbiased.
            u = (torch.arange(n, device=self.device) + torch.rand(n, generator=gen, device=self.device)) / n
            t = (1 + (u * (num_t - 1)).long()).clamp_(1, num_t - 1)
            noise = torch.randn(x_start.shape, generator=gen, device=self.device)
            x_t = self.diffusion.q_sample(x_start, t, noise=noise)
            rate = (num_t - 1) * self.diffusion.vb_terms_bpd(model_fn, x_start, x_t, t, clip_denoised=True)["output"]
            bpd = bpd + rate
            self.log(f"{stage}/bpd_rate", rate.mean(), batch_size=n, sync_dist=True)
        else:
            t, noise = zeros, noise0
        self.log(f"{stage}/bpd", bpd.mean(), prog_bar=stage == "val", batch_size=n, sync_dist=True)
        self.log(f"{stage}/bpd_decoder", decoder.mean(), batch_size=n, sync_dist=True)
        loss = self.diffusion.training_losses(model_fn, x_start, t, noise=noise)["loss"]
        self.log(f"{stage}/loss", loss.mean(), batch_size=n, sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        o = self.hparams.optim
        fused = o["fused"]
        if fused is None:
            fused = self.device.type == "cuda"
        trainer = self.attached_trainer()
        if fused and trainer is not None and "mixed" in str(trainer.precision) and trainer.gradient_clip_val:
            # Lightning cannot clip a fused optimizer's gradients under mixed precision; foreach Adam is the
            # same update (a recipe's optim.fused=true then still runs with trainer.precision=bf16-mixed)
            fused = False
        kwargs = dict(
            lr=float(o["lr"]),
            betas=tuple(float(b) for b in o["betas"]),
            eps=float(o["eps"]),
            weight_decay=float(o["weight_decay"]),
        )
        if fused:
            kwargs["fused"] = True
        optimizer = torch.optim.Adam(self.net.parameters(), **kwargs)
        warmup, decay = int(o["warmup_steps"]), o.get("lr_decay", "none")  # checkpoints before lr_decay: none
        total = int(trainer.max_steps) if trainer is not None and decay != "none" else None
        # official: lr * min(global_step / warmup, 1), then constant; checked once, before the first step
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(warmup, total, decay))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"Refusing to write a checkpoint with non-finite weights ({bad[:3]}...): the previous "
                "checkpoint is kept."
            )
        if self.config is not None:
            checkpoint["cfg"] = self.config
        if self.t_sampler is not None:
            checkpoint["t_sampler"] = self.t_sampler.state_dict()
        if self.class_names is not None:
            checkpoint["class_names"] = list(self.class_names)  # label i is class_names[i]
        from ddpm import __version__

        checkpoint["ddpm_version"] = __version__

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "cfg" in checkpoint and self.config is None:
            self.config = checkpoint["cfg"]
        if self.class_names is None and "class_names" in checkpoint:
            self.class_names = list(checkpoint["class_names"])
        if self.t_sampler is not None and "t_sampler" in checkpoint:
            self.t_sampler.load_state_dict(checkpoint["t_sampler"])
