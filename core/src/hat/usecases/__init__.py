"""Use cases: what a `hat` command does, as a library call the CLI and the demo share.

This is the layer between the plugin host and the CLI. A use case picks the config's
parts, builds them through the plugin host's registry and drives the libraries and the
engine with them (``deploy``: export, compile, check, validate). The libraries below
(``hat.deploy``, ``hat.quant``, ...) know nothing of configs, stages or plugins, which is
why this glue lives here rather than beside them. (``hat.stages``, ``hat.task_config``,
``hat.demo`` and ``hat.infer`` belong to this layer too; see ``tests/test_layers.py``.)
"""
