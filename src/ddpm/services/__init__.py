"""The services layer: loading a model (``loading``), generating images from seeds (``generate``), the runtime
and trainer builders (``runtime``, ``builders``, ``resume``), metrics, callbacks and the diffusers bridge
(``interop``). It imports only the core."""
