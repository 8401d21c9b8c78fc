"""``python -m ddpm.export``: runs :func:`ddpm.commands.export.main`."""

from ddpm.commands.export import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
