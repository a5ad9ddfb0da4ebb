"""The model as it will be deployed, and the inputs it is measured and exported with.

Configs name a ``deploy_model`` (the network without losses or post-processing; the
training ``model`` when absent) and ``deploy_inputs``, a map of input name -> shape at
batch 1 (e.g. ``img: [1, 3, 128, 128]``). `hat calops` measures them; export traces them.

A task whose deployment is several graphs with host code between them (a tracker's
detector and its query-update graph) names the further ones under ``deploy_graphs``::

    deploy_graphs:
      qim: {deploy_model: {...}, deploy_inputs: {...}}

Every graph is a forward mode of the same trained network, so one checkpoint serves them
all. The first graph is called ``model`` (files in ``export/`` and ``compile/``), a further
one by its name (``export/<name>/``, ``compile/<name>/``). ``deploy_graph: <name>`` in a
config selects one graph alone; without it `hat export`, `check`, `compile` and `calops`
handle every graph (:func:`graph_names`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hat.config import Config
from hat.errors import ConfigError
from hat.registry import Registry
from hat.workdir import MAIN_GRAPH

GRAPHS_KEY = "deploy_graphs"
GRAPH_KEY = "deploy_graph"


def _further_graphs(config: Config) -> dict[str, dict[str, Any]]:
    graphs = config.get(GRAPHS_KEY) or {}
    if not isinstance(graphs, dict):
        raise ConfigError(
            f"{GRAPHS_KEY} must map graph names to {{deploy_model, deploy_inputs}}", where=config.locate(GRAPHS_KEY)
        )
    for name, spec in graphs.items():
        where = config.locate(f"{GRAPHS_KEY}.{name}")
        if name == MAIN_GRAPH or not str(name).isidentifier():
            raise ConfigError(
                f"{GRAPHS_KEY} names a graph {name!r}; use a plain name other than {MAIN_GRAPH!r} (the first graph)",
                where=where,
            )
        if not isinstance(spec, dict) or "deploy_model" not in spec or "deploy_inputs" not in spec:
            raise ConfigError(f"{GRAPHS_KEY}.{name} needs deploy_model and deploy_inputs", where=where)
    return graphs


def graph_of(config: Config) -> str:
    """The graph this config stands for: its ``deploy_graph``, else the first one (``model``)."""
    graph = config.get(GRAPH_KEY) or MAIN_GRAPH
    if graph != MAIN_GRAPH and graph not in _further_graphs(config):
        known = ", ".join([MAIN_GRAPH, *_further_graphs(config)])
        raise ConfigError(
            f"{GRAPH_KEY}: {graph!r} is no deploy graph of this config",
            where=config.locate(GRAPH_KEY),
            hint=f"the graphs are: {known}",
        )
    return str(graph)


def all_graph_names(config: Config) -> list[str]:
    """Every deploy graph of the task, the first (``model``) first, whichever the config selects."""
    return [MAIN_GRAPH, *_further_graphs(config)]


def graph_names(config: Config) -> list[str]:
    """The graphs a deploy command handles: the selected one, or every one (first ``model``)."""
    if config.get(GRAPH_KEY):
        return [graph_of(config)]
    return all_graph_names(config)


def graph_config(config: Config, graph: str) -> Config:
    """``config`` standing for ``graph`` (its ``deploy_graph`` set); the config itself for its own graph."""
    if graph == graph_of(config):
        return config
    if graph != MAIN_GRAPH:
        _further_graphs(config)[graph]  # noqa: B018 -- a KeyError names an unknown graph; callers pass graph_names
    return dataclasses.replace(config, data={**config.data, GRAPH_KEY: graph})


def _deploy_key(config: Config) -> tuple[Any, str, Any, str]:
    """(deploy_model config, its key path, deploy_inputs, its key path) of the config's graph."""
    graph = graph_of(config)
    if graph != MAIN_GRAPH:
        spec = _further_graphs(config)[graph]
        base = f"{GRAPHS_KEY}.{graph}"
        return spec["deploy_model"], f"{base}.deploy_model", spec["deploy_inputs"], f"{base}.deploy_inputs"
    key = "deploy_model" if "deploy_model" in config else "model"
    return config.get(key), key, config.get("deploy_inputs"), "deploy_inputs"


def deploy_inputs(config: Config) -> dict[str, torch.Tensor]:
    _, _, spec, key = _deploy_key(config)
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"config {config.name} has no {key}",
            where=config.locate(key) if config.get(GRAPH_KEY) else str(config.path),
            hint="add e.g. `deploy_inputs: {img: [1, 3, 128, 128]}` (input name -> shape at batch 1)",
        )
    inputs: dict[str, torch.Tensor] = {}
    for name, shape in spec.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(
                f"{key}.{name} must be a list of positive integers, got {shape!r}",
                where=config.locate(f"{key}.{name}"),
            )
        inputs[str(name)] = torch.zeros(shape)
    return inputs


def build_deploy_model(config: Config, registry: Registry) -> tuple[torch.nn.Module, dict[str, Any]]:
    model_cfg, key, _, _ = _deploy_key(config)
    if model_cfg is None:
        raise ConfigError(f"config {config.name} has no model or deploy_model", where=str(config.path))
    model = registry.build(model_cfg, path=key, locate=config.locate)
    return model.eval(), deploy_inputs(config)
