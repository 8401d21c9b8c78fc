"""The two digits feature extractors: small CNN classifiers of the 8x8 scikit-learn digits, trained apart.

* :class:`DigitsExtractor` (``ddpm-digits``, "extractor A", the project's original): two 3x3 convs, max pool, a
  64-d fully connected layer (``features``), 10 logits; Adam + one-cycle, seed 0.
* :class:`DigitsExtractorB` (``ddpm-digits-b``, "extractor B", the independent second opinion): a 5x5 conv, a
  strided 3x3 conv (no pooling), a 32-d fully connected layer (``features``), 10 logits; AdamW + cosine decay,
  label smoothing, batch 32, seed 1. Held-out accuracy: val 0.978, test 0.967 (A: 0.989, 0.989).

Both train deterministically (one thread, fixed seed, a few seconds on CPU) on the digits TRAIN split
(:func:`ddpm.core.data.digits.digits_split`); their held-out accuracies are in :func:`train_digits_classifier`'s
result and in the cached file's metadata. The weights are cached as safetensors in ``$DDPM_CACHE`` (default
``~/.cache/ddpm``) under a version key (:data:`CLASSIFIER_VERSION`, :data:`CLASSIFIER_B_VERSION`) and retrained
when missing. They stand in for Inception wherever no Inception weights are available (tests, quickstart).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddpm.core.data.digits import digits_split
from ddpm.core.io import atomic_write
from ddpm.services.metrics.features import Extractor, default_cache_dir, to_nchw_uint8

__all__ = [
    "CLASSIFIER_B_VERSION",
    "CLASSIFIER_VERSION",
    "DIGITS_EXTRACTOR_B_NAME",
    "DIGITS_EXTRACTOR_NAME",
    "DigitsExtractor",
    "DigitsExtractorB",
    "DigitsNet",
    "DigitsNetB",
    "classifier_metadata",
    "load_or_train_digits_classifier",
    "train_digits_classifier",
    "train_digits_classifier_b",
]

DIGITS_EXTRACTOR_NAME = "ddpm-digits"
CLASSIFIER_VERSION = "digits-cnn-v1"  # bump when the architecture, data or training recipe changes
DIGITS_EXTRACTOR_B_NAME = "ddpm-digits-b"
CLASSIFIER_B_VERSION = "digits-cnn-b-v1"  # the same, for extractor B


class DigitsNet(nn.Module):
    """conv(1->16) conv(16->32) maxpool -> 32x4x4 -> fc 64 (``features``, pre-activation) -> ReLU -> fc 10."""

    feature_dim = 64
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: float [N, 1, 8, 8] in [-1, 1]. Returns ``(features [N, 64], logits [N, 10])``."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        f = self.fc1(h.flatten(1))
        return f, self.fc2(F.relu(f))


class DigitsNetB(nn.Module):
    """Extractor B: conv5x5(1->24) conv3x3(24->48, stride 2) -> 48x4x4 -> fc 32 (``features``, pre-activation)
    -> ReLU -> fc 10."""

    feature_dim = 32
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 5, padding=2)
        self.conv2 = nn.Conv2d(24, 48, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(48 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: float [N, 1, 8, 8] in [-1, 1]. Returns ``(features [N, 32], logits [N, 10])``."""
        h = F.relu(self.conv1(x))
        f = self.fc1(F.relu(self.conv2(h)).flatten(1))
        return f, self.fc2(F.relu(f))


def _preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float [N, 1, 8, 8] in [-1, 1] (channel mean; area-style resize if not 8x8)."""
    x = to_nchw_uint8(x).float() / 255.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] != 1:
        raise ValueError(f"digits extractor takes 1 or 3 channels, got {x.shape[1]}")
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    return x * 2.0 - 1.0


def _shift_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by -1..1 pixel (zero fill), deterministic given ``g``."""
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            if m.any():
                out[m] = pad[m, :, i : i + 8, j : j + 8]
    return out


def _fit(make_net, make_opt, seed: int, epochs: int, batch_size: int, label_smoothing: float = 0.0):
    """The one training loop of both extractors: ``make_net()`` under ``seed``, ``make_opt(net, steps)`` ->
    ``(optimizer, scheduler)``, random +-1 pixel shifts, cross-entropy; CPU, one thread (tiny convs: threads only
    add contention, and 1 thread is reproducible). Returns ``(net, {"train"|"val"|"test": accuracy})``."""
    xtr, ytr = digits_split("train")
    g = torch.Generator().manual_seed(seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make_net()
        xtr = _preprocess(xtr)
        opt, sched = make_opt(net, epochs * math.ceil(xtr.shape[0] / batch_size))
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(xtr.shape[0], generator=g)
            for i in range(0, xtr.shape[0], batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(net(_shift_augment(xtr[idx], g))[1], ytr[idx], label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        acc = {s: _accuracy(net, *digits_split(s)) for s in ("train", "val", "test")}
    finally:
        torch.set_num_threads(prev_threads)
    return net, acc


def train_digits_classifier(seed: int = 0, epochs: int = 12, batch_size: int = 64) -> tuple[DigitsNet, dict]:
    """Train :class:`DigitsNet` (extractor A) on the train split; returns ``(net, {"train"|"val"|"test":
    accuracy})``.

    CPU, one thread, fixed seed: deterministic and ~3-6 s. Adam + one-cycle LR, random +-1 pixel shifts.
    """

    def opt(net, steps):
        adam = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        return adam, torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=3e-3, total_steps=steps)

    return _fit(DigitsNet, opt, seed, epochs, batch_size)


def train_digits_classifier_b(seed: int = 1, epochs: int = 15, batch_size: int = 32) -> tuple[DigitsNetB, dict]:
    """Train :class:`DigitsNetB` (extractor B) on the train split; returns ``(net, {"train"|"val"|"test":
    accuracy})``.

    Another recipe than A's on purpose: AdamW (weight decay 1e-3) with a cosine learning rate from 4e-3, label
    smoothing 0.1, batch 32, 15 epochs, seed 1, random +-1 pixel shifts. CPU, one thread: deterministic, ~3 s.
    """

    def opt(net, steps):
        adamw = torch.optim.AdamW(net.parameters(), lr=4e-3, weight_decay=1e-3)
        return adamw, torch.optim.lr_scheduler.CosineAnnealingLR(adamw, T_max=steps)

    return _fit(DigitsNetB, opt, seed, epochs, batch_size, label_smoothing=0.1)


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(_preprocess(x))[1].argmax(1) == y).double().mean())


# variant -> (network class, cache version key, training function)
_VARIANTS = {"a": (DigitsNet, CLASSIFIER_VERSION, train_digits_classifier),
             "b": (DigitsNetB, CLASSIFIER_B_VERSION, train_digits_classifier_b)}


def _weights_file(cache_dir: str | os.PathLike | None, variant: str = "a") -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{_VARIANTS[variant][1]}.safetensors"


_NET_MEMO: dict[str, nn.Module] = {}


def load_or_train_digits_classifier(
    cache_dir: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None, variant: str = "a"
) -> nn.Module:
    """The cached classifier (``{cache_dir}/{version}.safetensors``), training and caching it if missing;
    ``variant`` ``"a"`` (:class:`DigitsNet`, :data:`CLASSIFIER_VERSION`) or ``"b"`` (:class:`DigitsNetB`,
    :data:`CLASSIFIER_B_VERSION`).

    ``weights_path`` loads an explicit file instead (never trains). The file is written atomically, with the
    held-out accuracies in its metadata (:func:`classifier_metadata`).
    """
    from safetensors.torch import load_file, save_file

    net_cls, version, train = _VARIANTS[variant]
    path = Path(weights_path) if weights_path is not None else _weights_file(cache_dir, variant)
    key = str(path.resolve())
    if key in _NET_MEMO:
        return _NET_MEMO[key]
    net = net_cls()
    if path.exists():
        net.load_state_dict(load_file(str(path)))
    elif weights_path is not None:
        raise FileNotFoundError(f"digits classifier weights not found: {path}")
    else:
        with torch.enable_grad():  # callers may be inside no_grad / inference code
            net, acc = train()
        meta = {"version": version, **{f"acc_{k}": f"{v:.4f}" for k, v in acc.items()}}
        with atomic_write(path) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
    net.requires_grad_(False).eval()
    _NET_MEMO[key] = net
    return net


def classifier_metadata(cache_dir: str | os.PathLike | None = None, variant: str = "a") -> dict:
    """The cached classifier's metadata: ``version`` and the accuracies ``acc_train``/``acc_val``/``acc_test``
    (held out: val and test), training it first if missing."""
    from safetensors import safe_open

    load_or_train_digits_classifier(cache_dir, variant=variant)
    with safe_open(str(_weights_file(cache_dir, variant)), framework="pt") as f:
        return dict(f.metadata() or {})


class DigitsExtractor(Extractor):
    """``ddpm-digits`` (extractor A): uint8 [N, C, H, W] -> 64-d ``features`` and 10 ``logits`` of the digits
    CNN.

    3-channel input is averaged to grey; sizes other than 8x8 are resized to 8x8 (antialiased bilinear).
    """

    name = DIGITS_EXTRACTOR_NAME
    variant = "a"
    feature_dim = DigitsNet.feature_dim
    num_classes = DigitsNet.num_classes

    def __init__(
        self, cache_dir: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None
    ):
        super().__init__()
        src = load_or_train_digits_classifier(cache_dir, weights_path, self.variant)
        self.net = _VARIANTS[self.variant][0]()
        self.net.load_state_dict(src.state_dict())
        self.net.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _preprocess(x).to(next(self.net.parameters()).device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            f, logits = self.net(x)
        return {"features": f, "logits": logits}


class DigitsExtractorB(DigitsExtractor):
    """``ddpm-digits-b`` (extractor B): uint8 [N, C, H, W] -> 32-d ``features`` and 10 ``logits`` of the second,
    independently trained digits CNN (:class:`DigitsNetB`). Input handling as :class:`DigitsExtractor`."""

    name = DIGITS_EXTRACTOR_B_NAME
    variant = "b"
    feature_dim = DigitsNetB.feature_dim
    num_classes = DigitsNetB.num_classes
