"""The commands layer: each application (``training``, ``sampling``, ``nll``, ``figures``, ``frontier``,
``report``, ``export``, ``convert``, ``build_refstats``) and the shared Hydra shell of ``train.py`` and
``sample.py`` (``shell``). ``python -m ddpm.<tool>`` runs the module of the same name at the package top."""
