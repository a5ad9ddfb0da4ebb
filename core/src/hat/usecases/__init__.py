"""Use cases: what a `hat` command does, as a library call the CLI and the demo share.

This is the layer between the plugin host and the CLI. A use case picks the config's
parts, builds them through the plugin host's registry and drives the libraries and the
engine with them. The libraries below (``hat.deploy``, ``hat.quant``, ...) know nothing of
configs, stages or plugins, which is why this glue lives here rather than beside them.

- ``task_config``: from what a user types (a task, a config name, a file) to a config;
- ``stages``: the stage protocol (train and predict a stage in a work dir);
- ``deploy``: export, check, compile, validate;
- ``infer``: the exported model on a user's files;
- ``demo``: the whole chain on synthetic data.
"""
