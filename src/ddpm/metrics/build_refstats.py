"""Reference statistics for FID from any Hydra data config, in one command.

::

    python -m ddpm.metrics.build_refstats data=cifar10 split=train                    # TF-Inception
    python -m ddpm.metrics.build_refstats data=cifar10 split=train inception_weights=/path/weights.pth
    python -m ddpm.metrics.build_refstats data=digits split=train feature_extractor=digits
    python -m ddpm.metrics.build_refstats data=image_folder data.root=/data/faces data.resolution=64
    python -m ddpm.metrics.build_refstats data=celebahq256 out_dir=stats/

Every ``data=...`` / ``data.*=...`` argument is a Hydra override of ``conf/train.yaml`` (so every
``conf/data`` option works: cifar10, celebahq256, lsun_*, image_folder, digits). The other keys are:
``split`` (train|val|test, default train: the paper's FID reference), ``feature_extractor``
(inception|digits), ``inception_weights`` (local weights for offline machines), ``out_dir`` (default
``$DDPM_CACHE/refstats``), ``max_items`` (first N images only; the count is in the file name),
``batch_size``, ``device``.

Folders of images are read by the data layer (:mod:`ddpm.data.folder`: the same files, RGB conversion,
resize and splits as training). To take every image of a folder as the reference, add
``data.val_fraction=0 data.test_fraction=0`` (or keep the images in ``root/train/``).

The file is named by :func:`ddpm.metrics.refstats.ref_stats_path`, e.g.
``cifar10-32-train-inception-v3-compat-n50000.npz``; ``sample.py compute_fid=true`` and the FID callback
look for the same name and build it there when it is missing, so this command only pre-computes it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from ddpm.metrics.extractors import get_extractor
from ddpm.metrics.refstats import reference_stats

__all__ = ["main"]

_KEYS = {"split", "feature_extractor", "inception_weights", "out_dir", "max_items", "batch_size", "device"}


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts: dict[str, str] = {}
    overrides = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in _KEYS:
            opts[key] = value
        elif a in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        else:
            overrides.append(a)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ddpm.config import compose

    cfg = compose("train", overrides)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    dm = instantiate(data_cfg)
    device = torch.device(opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _opt(key):
        v = opts.get(key)
        return None if v in (None, "", "null", "None") else v

    extractor = get_extractor(
        opts.get("feature_extractor", "inception"), weights_path=_opt("inception_weights"), device=device
    )
    if extractor.name == "ddpm-digits" and dm.image_shape[-1] != 8:
        warnings.warn(
            "the digits extractor resizes images to 8x8; its FID is only meaningful for 8x8 digits", stacklevel=1
        )
    out_dir = _opt("out_dir")
    if out_dir is None:
        out_dir = Path(str(cfg.paths.cache_dir)) / "refstats"
    stats, path = reference_stats(
        dm,
        opts.get("split", "train"),
        extractor,
        cache_dir=out_dir,
        max_items=int(_opt("max_items")) if _opt("max_items") else None,
        device=device,
        batch_size=int(opts.get("batch_size", 256)),
    )
    print(f"{path}  (n={stats.n}, dim={stats.dim}, extractor={stats.extractor}, sha256={stats.sha[:16]}...)")
    return path


if __name__ == "__main__":
    main()
