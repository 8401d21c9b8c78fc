"""``python -m ddpm.frontier``: runs :func:`ddpm.commands.frontier.main`."""

from ddpm.commands.frontier import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
