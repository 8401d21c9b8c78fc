"""FID/IS through torch-fidelity (``fid_backend=torch-fidelity``), as a cross-check of :mod:`ddpm.services.metrics.fid`.

:func:`register_with_torch_fidelity` registers the digits extractor so ``torch_fidelity.calculate_metrics(...,
feature_extractor="ddpm-digits")`` works offline.
"""

from __future__ import annotations

import os

import torch

from ddpm.services.metrics.digits_classifier import DIGITS_EXTRACTOR_NAME, DigitsExtractor
from ddpm.services.metrics.features import to_nchw_uint8

__all__ = ["compute_with_torch_fidelity", "register_with_torch_fidelity"]


class _UInt8Dataset(torch.utils.data.Dataset):
    """uint8 images as a torch-fidelity input (a Dataset returning uint8 [3, H, W])."""

    def __init__(self, images):
        self.x = to_nchw_uint8(images)

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        x = self.x[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def compute_with_torch_fidelity(
    samples,
    ref_input,
    *,
    feature_extractor: str = "inception-v3-compat",
    weights_path: str | os.PathLike | None = None,
    isc: bool = True,
    fid: bool = True,
    isc_splits: int = 10,
    batch_size: int = 64,
    cuda: bool | None = None,
    cache: bool = False,
    verbose: bool = False,
    **kwargs,
) -> dict:
    """Thin wrapper over ``torch_fidelity.calculate_metrics`` for the final numbers.

    ``samples`` / ``ref_input``: a directory of images, a registered torch-fidelity input name
    (``cifar10-train``), a ``Dataset`` returning uint8 [3,H,W], or a uint8 tensor/array (wrapped as a
    Dataset). ``feature_extractor``: ``inception-v3-compat`` (``weights_path`` = local weights) or
    ``ddpm-digits`` (registered here, offline). Returns ``{"fid": ..., "is": ..., "is_std": ...,
    "n_samples": ..., "extractor": ..., "raw": {...}}``. Extra ``kwargs`` go to ``calculate_metrics`` (e.g.
    ``samples_find_deep=True``, ``datasets_download=False``).
    """
    import torch_fidelity

    if feature_extractor in ("digits", "ddpm-digits"):
        feature_extractor = register_with_torch_fidelity()
    elif feature_extractor == "inception":
        feature_extractor = "inception-v3-compat"

    def _input(x):
        if isinstance(x, (str, os.PathLike)):
            return str(x)
        if isinstance(x, torch.utils.data.Dataset):
            return x
        return _UInt8Dataset(x)

    args = dict(
        input1=_input(samples),
        isc=isc,
        fid=fid,
        isc_splits=isc_splits,
        feature_extractor=feature_extractor,
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        cache=cache,
        verbose=verbose,
        save_cpu_ram=True,
    )
    if fid:
        args["input2"] = _input(ref_input)
    if isinstance(args["input1"], str) and os.path.isdir(args["input1"]):
        args.setdefault("samples_find_deep", True)
    if weights_path is not None and (
        feature_extractor != "ddpm-digits" or str(weights_path).endswith(".safetensors")
    ):
        args["feature_extractor_weights_path"] = str(weights_path)
    args.update(kwargs)
    try:
        raw = torch_fidelity.calculate_metrics(**args)
    except Exception as e:
        if (
            feature_extractor == "inception-v3-compat"
            and weights_path is None
            and "URL" in type(e).__name__ + str(e)
        ):
            raise RuntimeError(
                f"torch-fidelity could not download the Inception weights ({e}); pass inception_weights=PATH"
            ) from e
        raise
    inp = args["input1"]
    n = len(inp) if isinstance(inp, torch.utils.data.Dataset) else None
    out = {"extractor": feature_extractor, "n_samples": n, "raw": dict(raw)}
    if fid:
        out["fid"] = float(raw["frechet_inception_distance"])
    if isc:
        out["is"] = float(raw["inception_score_mean"])
        out["is_std"] = float(raw["inception_score_std"])
    return out


def register_with_torch_fidelity() -> str:
    """Register ``ddpm-digits`` with torch-fidelity (idempotent) and return the name.

    torch-fidelity builds it as ``cls(name, features_list, **calculate_metrics_kwargs)``; the classifier
    comes from ``feature_extractor_weights_path`` if given (a ``.safetensors`` file), else from
    ``$DDPM_CACHE``. Features: ``features`` (default for fid/kid/prc) and ``logits`` (default for isc).
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if DIGITS_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:

        class DigitsFidelityExtractor(torch_fidelity.FeatureExtractorBase):
            def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
                super().__init__(name, features_list)
                w = feature_extractor_weights_path
                self.ext = DigitsExtractor(weights_path=w if str(w or "").endswith(".safetensors") else None)

            @staticmethod
            def get_provided_features_list():
                return ("features", "logits")

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

            def forward(self, x):
                out = self.ext(x)
                return tuple(out[k] for k in self.features_list)

        DigitsFidelityExtractor.__qualname__ = "DigitsFidelityExtractor"
        torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR_NAME, DigitsFidelityExtractor)
    return DIGITS_EXTRACTOR_NAME
