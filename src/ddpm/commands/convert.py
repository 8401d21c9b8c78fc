"""``python -m ddpm.convert SRC OUT [--download]`` (console script ``ddpm-convert``): published DDPM weights in
diffusers' layout (a local folder or weights file, or with ``--download`` a hub id such as
``google/ddpm-cifar10-32``) as one self-describing safetensors file ``OUT`` (or ``OUT/NAME.safetensors`` for an
existing folder) that ``sample.py pretrained=OUT`` loads with no model flags. The work is :mod:`ddpm.services.interop`'s.
"""

from __future__ import annotations

from pathlib import Path

from ddpm.core.cli import parse_paths
from ddpm.services.interop import PRETRAINED, load_diffusers_unet, resolve_pretrained, save_converted


def main(argv: list[str] | None = None) -> None:
    """The command; also the ``ddpm-convert`` console script, whose wrapper exits with what this returns."""
    args = parse_paths("python -m ddpm.convert", "Convert a diffusers UNet2DModel DDPM checkpoint (e.g. "
                       "google/ddpm-cifar10-32) into a self-describing safetensors file for this project.",
                       {"src": "local folder / weights file, or a hub id with --download",
                        "out": "output .safetensors file (or an existing folder)"},
                       {"--download": "allow fetching a hub id with huggingface_hub"}, argv)
    path = resolve_pretrained(args.src, allow_download=args.download)
    source = args.src if args.src in PRETRAINED or not Path(args.src).exists() else None
    unet, info = load_diffusers_unet(path, source=source)
    out = Path(args.out)
    if out.is_dir():
        out = out / f"{Path(str(args.src).rstrip('/')).name}.safetensors"
    save_converted(unet, info, out)
    n_params = sum(p.numel() for p in unet.parameters())
    settings = {k: v for k, v in info.items() if k != "model"}
    print(f"wrote {out} ({n_params:,} parameters)\nmodel: {unet.config()}\ndiffusion: {settings}")


if __name__ == "__main__":
    from ddpm.core.cli import user_errors

    with user_errors():
        main()
