"""The TF-Inception feature extractor (``inception-v3-compat``): torch-fidelity's port of the network behind
the published FID and Inception Score numbers.

Built only on request. ``weights_path`` (config ``fid.inception_weights=PATH``) points at a local copy of the
weights for air-gapped machines; without it the weights come from the torch hub cache.
"""

from __future__ import annotations

import os

import torch

from ddpm.core.io import DownloadError
from ddpm.services.metrics.features import Extractor, to_nchw_uint8

__all__ = ["INCEPTION_WEIGHTS_URL", "InceptionExtractor"]

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


class InceptionExtractor(Extractor):
    """torch-fidelity's TF-Inception-v3 port (``inception-v3-compat``): pool3 2048-d features,
    ``logits_unbiased``.

    ``weights_path``: a local copy of :data:`INCEPTION_WEIGHTS_URL` (torch-fidelity's
    ``feature_extractor_weights_path``). Without it the weights are looked up in the torch hub cache and
    downloaded if missing; offline that fails with an error naming ``fid.inception_weights=PATH``.
    """

    name = "inception-v3-compat"
    feature_dim = 2048
    num_classes = 1008

    def __init__(self, weights_path: str | os.PathLike | None = None, weights_key: str | None = None):
        """``weights_key``: the option that gave ``weights_path`` as the calling command spells it, for its
        messages (``None``: sample.py's ``fid.inception_weights``, and train.py's key beside it)."""
        super().__init__()
        key = weights_key or "fid.inception_weights"
        train_key = "" if weights_key else " (train.py's FID callback: callbacks.fid.metric.inception_weights)"
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path is not None and not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"{key}={weights_path}: file not found (expected a copy of {INCEPTION_WEIGHTS_URL}){train_key}"
            )
        if weights_path is not None:
            # torch-fidelity reads the file with weights_only=False; refuse anything that is not plain tensors
            try:
                torch.load(weights_path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{key}={weights_path}: not a plain state dict ({e})") from e
        try:
            self.net = FeatureExtractorInceptionV3(
                self.name,
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
                verbose=False,
            )
        except Exception as e:  # no network / dead URL
            if weights_path is not None:
                raise
            raise DownloadError(
                "Could not obtain the TF-Inception weights for FID/IS "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). On an offline machine download "
                f"{INCEPTION_WEIGHTS_URL} elsewhere and pass {key}=PATH{train_key}."
            ) from e
        self.net.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval (lucidrains/denoising-diffusion-pytorch#234)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = to_nchw_uint8(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            feats, logits = self.net(x.contiguous())
        return {"features": feats.float(), "logits": logits.float()}
