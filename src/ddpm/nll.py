"""``python -m ddpm.nll``: runs :func:`ddpm.commands.nll.main`."""

from ddpm.commands.nll import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
