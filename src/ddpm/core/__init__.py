"""The core layer: the diffusion math (``diffusion``), the networks (``nets``), the data modules (``data``), the
LightningModule (``module``), atomic IO (``io``), seed hashes (``seeds``) and the settings: schemas (``config``),
value checks (``checks``) and the command shell's error handling (``cli``). It imports nothing above it."""
