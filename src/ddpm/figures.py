"""``python -m ddpm.figures``: runs :func:`ddpm.commands.figures.main`."""

from ddpm.commands.figures import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
