"""The old path of the reference-statistics command: it is ``python -m ddpm.build_refstats`` (a command, not a
metrics service); typed here, it says so in one line."""

import sys

if __name__ == "__main__":
    sys.exit("Error: python -m ddpm.metrics.build_refstats moved: run python -m ddpm.build_refstats with the same "
             "settings (console script: ddpm-build-refstats).")
