"""The bridge to the diffusers format, both ways: published ``UNet2DModel`` checkpoints in
(``python -m ddpm.convert``), a trained run out as a ``DDPMPipeline`` folder (``python -m ddpm.export``).

One name table (:mod:`~ddpm.services.interop.names`: schedules, prediction types, variance types) and one tensor-name
map (:mod:`~ddpm.services.interop.keys`) are read both ways, so ``convert(export(run))`` gives back the run's network
and diffusion bit for bit, and ``export(convert(weights))`` the published weights and their scheduler.

* :mod:`~ddpm.services.interop.unet`: the ``config.json`` of the architecture, both ways;
* :mod:`~ddpm.services.interop.scheduler`: the ``scheduler_config.json`` of the diffusion, both ways;
* :mod:`~ddpm.services.interop.folder`: reading a diffusers folder or weights file, writing a pipeline folder;
* :mod:`~ddpm.services.interop.converted`: this project's self-describing safetensors file of published weights;
* :mod:`~ddpm.services.interop.hub`: the published ``google/ddpm-*`` ids, downloaded only when asked to;
* :mod:`~ddpm.services.interop.card`: the Hub model card of an exported run.
"""

from ddpm.services.interop.converted import FORMAT, load_converted, read_converted_metadata, save_converted
from ddpm.services.interop.folder import GRID_NAME, WEIGHT_NAMES, export_pipeline, load_diffusers_unet, read_weights
from ddpm.services.interop.hub import PRETRAINED, resolve_pretrained
from ddpm.services.interop.keys import convert_diffusers_state_dict, diffusers_key_map, diffusers_state_dict
from ddpm.services.interop.names import PREDICTIONS, SCHEDULES, VARIANCES, NameTable, NotExportableError
from ddpm.services.interop.scheduler import (
    apply_scheduler_config,
    check_exportable,
    default_diffusion_settings,
    diffusers_scheduler_config,
    schedule_of_betas,
)
from ddpm.services.interop.unet import diffusers_unet_config, infer_unet_kwargs, unet_kwargs_from_diffusers_config

__all__ = [
    "FORMAT",
    "GRID_NAME",
    "PREDICTIONS",
    "PRETRAINED",
    "SCHEDULES",
    "VARIANCES",
    "WEIGHT_NAMES",
    "NameTable",
    "NotExportableError",
    "apply_scheduler_config",
    "check_exportable",
    "convert_diffusers_state_dict",
    "default_diffusion_settings",
    "diffusers_key_map",
    "diffusers_scheduler_config",
    "diffusers_state_dict",
    "diffusers_unet_config",
    "export_pipeline",
    "infer_unet_kwargs",
    "load_converted",
    "load_diffusers_unet",
    "read_converted_metadata",
    "read_weights",
    "resolve_pretrained",
    "save_converted",
    "schedule_of_betas",
    "unet_kwargs_from_diffusers_config",
]
