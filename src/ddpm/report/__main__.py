"""``python -m ddpm.report``: see :mod:`ddpm.report`."""

from ddpm.report import main

main()
