"""``python -m ddpm.convert``: runs :func:`ddpm.commands.convert.main`."""

from ddpm.commands.convert import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
