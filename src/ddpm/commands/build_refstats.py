"""Reference statistics for FID from any ``conf/data`` option, in one command (settings: conf/build_refstats.yaml;
``--help`` lists them; console script ``ddpm-build-refstats``)::

    python -m ddpm.build_refstats data=cifar10                     # TF-Inception, the train split
    python -m ddpm.build_refstats data=cifar10 inception_weights=/path/weights.pth
    python -m ddpm.build_refstats data=digits feature_extractor=digits
    python -m ddpm.build_refstats data=image_folder data.root=/data/faces data.resolution=64
    python -m ddpm.build_refstats data=celebahq256 out_dir=stats/

Folders of images are read by the data layer (:mod:`ddpm.core.data.folder`: the same files, RGB conversion,
resize and splits as training). To take every image of a folder as the reference, add
``data.val_fraction=0 data.test_fraction=0`` (or keep the images in ``root/train/``).

The file is named by :func:`ddpm.services.metrics.refstats.ref_stats_path`, e.g.
``cifar10-32-train-inception-v3-compat-n50000.npz``; ``sample.py compute_fid=true`` and the FID callback
look for the same name and build it there when it is missing, so this command only pre-computes it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from omegaconf import DictConfig

from ddpm.core.cli import hydra_app
from ddpm.services.metrics.extractors import get_extractor
from ddpm.services.metrics.refstats import reference_stats
from ddpm.services.runtime import device_of

__all__ = ["build_refstats", "main"]


def build_refstats(cfg: DictConfig) -> Path:
    """Compute (or find cached) the reference statistics ``cfg`` describes (conf/build_refstats.yaml)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    dm = instantiate(OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True))
    device = device_of(cfg.device)
    extractor = get_extractor(cfg.feature_extractor, weights_path=cfg.inception_weights,
                              weights_key="inception_weights", name_key="feature_extractor", device=device)
    if extractor.name == "ddpm-digits" and dm.image_shape[-1] != 8:
        warnings.warn(
            "the digits extractor resizes images to 8x8; its FID is only meaningful for 8x8 digits", stacklevel=1
        )
    out_dir = cfg.out_dir if cfg.out_dir is not None else Path(str(cfg.paths.cache_dir)) / "refstats"
    stats, path = reference_stats(dm, cfg.split, extractor, cache_dir=out_dir, max_items=cfg.max_items,
                                  device=device, batch_size=int(cfg.batch_size))
    print(f"{path}  (n={stats.n}, dim={stats.dim}, extractor={stats.extractor}, sha256={stats.sha[:16]}...)")
    return path


def main() -> None:
    """``python -m ddpm.build_refstats`` / ``ddpm-build-refstats``: the Hydra app of conf/build_refstats.yaml."""
    hydra_app("build_refstats", build_refstats)


if __name__ == "__main__":
    main()
