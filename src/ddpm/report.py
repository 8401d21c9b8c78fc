"""``python -m ddpm.report``: runs :func:`ddpm.commands.report.main`."""

from ddpm.commands.report import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
