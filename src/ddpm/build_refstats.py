"""``python -m ddpm.build_refstats``: runs :func:`ddpm.commands.build_refstats.main`."""

from ddpm.commands.build_refstats import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
