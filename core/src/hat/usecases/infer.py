"""`hat infer TASK --input FILE --save-path DIR`: the deployable model on a user's files.

The model is the exported int8 ONNX (or, with ``--model float``, model.float.onnx) run by
onnxruntime, as it would run on the device. What to read, how to pre-process, decode
and draw is the task's: its config's ``infer`` section builds a registered *inferer*
(usually a :class:`hat.inferer.ImageInferer`), ``inferer(paths, model, save_path) ->
written files``, where ``model(batch)`` maps a dict of input tensors to a dict of output
tensors. The CLI has no task options of its own: a task's (``hat infer fcos3d --calib
FILE``, the camera intrinsics a 3D detector needs) are the keyword-only parameters
with defaults of its inferer's ``__call__``, parsed by :mod:`hat.extra_options` as
``hat pack`` parses a packer's, and refused with the task's list when unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hat import workdir
from hat.errors import ConfigError, UserError
from hat.extra_options import declared_options, describe_options, parse_extra_options
from hat.plugins import PluginHost, get_host
from hat.usecases.stages import StageConfig

MODELS = {"int8": workdir.EXPORTED_MODEL, "float": workdir.FLOAT_MODEL}


def build_inferer(stage_cfg: StageConfig, host: PluginHost | None = None) -> Callable[..., Sequence[Path]]:
    """The config's ``infer`` section, built (its ``__call__`` declares the task's options)."""
    host = host or get_host()
    cfg = stage_cfg.config
    if "infer" not in cfg:
        raise ConfigError(f"config {cfg.name} has no infer section", where=str(cfg.path))
    return host.registry.build(cfg["infer"], path="infer", locate=cfg.locate)


def describe_infer_options(task: str, host: PluginHost | None = None) -> str | None:
    """``--calib PATH`` (or ``none``): the options of the task's inferer, for `hat list`.

    Read from the ``infer`` type of the task's default config without building it;
    None when the config has no ``infer`` section or cannot be loaded.
    """
    from hat.usecases.task_config import load_task_config

    host = host or get_host()
    try:
        cfg = load_task_config(task, (), host=host, defaults={"work_dir": ".", "task": task})
        section = cfg.get("infer")
        if not isinstance(section, dict) or not isinstance(section.get("type"), str):
            return None
        inferer_type = host.registry.get(section["type"])
    except UserError:
        return None
    # A class's options are its __call__'s (describe_options would read a class's __init__).
    return describe_options(inferer_type.__call__ if isinstance(inferer_type, type) else inferer_type)


def parse_infer_options(args: Sequence[str], inferer: Callable[..., Any], task: str) -> dict[str, Any]:
    """``hat infer TASK``'s remaining ``--name value`` arguments as the inferer's keyword arguments."""
    return parse_extra_options(args, inferer, f"`hat infer {task}`")


def run_infer(
    stage_cfg: StageConfig,
    inputs: Sequence[Path],
    save_path: Path,
    *,
    model: str = "int8",
    host: PluginHost | None = None,
    inferer: Callable[..., Sequence[Path]] | None = None,
    **options: Any,
) -> list[Path]:
    """Run the task's inferer (``inferer``, or the config's) on ``inputs`` with the exported model.

    ``options`` are the task's options (see the module docstring); one the inferer does
    not declare, or a path option naming no file, is a :class:`UserError`.
    """
    from hat.deploy.files import verified_export
    from hat.engine.deploy_model import all_graph_names
    from hat.engine.onnx_predictor import DeployedGraphs, OnnxModel
    from hat.inferer import ImageFileError

    inferer = inferer if inferer is not None else build_inferer(stage_cfg, host)
    declared = declared_options(inferer)
    for name, value in options.items():
        if name not in declared:
            raise UserError(
                f"`hat infer {stage_cfg.task}` has no option --{name.replace('_', '-')}",
                hint=f"its options: {describe_options(inferer)}",
            )
        if isinstance(value, Path) and not value.is_file():
            raise UserError(f"--{name.replace('_', '-')} file not found: {value}")
    if model not in MODELS:
        raise UserError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    inputs = collect_inputs(inputs)
    remedy = workdir.command_for(stage_cfg.task, "export", stage_cfg.work_dir, stage_cfg.config.name)
    # Every deploy graph of the task (one, for most): a multi-graph task's inferer runs them all.
    paths = {
        graph: workdir.export_dir(stage_cfg.work_dir, graph) / MODELS[model]
        for graph in all_graph_names(stage_cfg.config)
    }
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"no exported model at {path}", hint=f"run `{remedy}` first")
        verified_export(path, remedy=remedy)  # the model export wrote, not a file copied over it
    save_path = Path(save_path)
    try:
        save_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageFileError(
            f"cannot create --save-path {save_path}: {exc.strerror or exc}",
            where=str(save_path),
            hint="pass a --save-path directory you can write to",
        ) from exc
    backend = compile_backend(stage_cfg, host or get_host())
    models = {graph: OnnxModel(path, backend=backend) for graph, path in paths.items()}
    runnable = models[workdir.MAIN_GRAPH] if len(models) == 1 else DeployedGraphs(models)
    return list(inferer([Path(p) for p in inputs], runnable, save_path, **options))


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """The files ``--input`` names: each file as given, each directory's image files sorted by name.

    A directory is taken as its pictures (:func:`hat.inferer.image_files`: JPEG, PNG and
    BMP directly in it), so ``--input photos/`` works as users type it; one with none is
    an error, as is a path that does not exist. Nothing is read yet.
    """
    from hat import console
    from hat.inferer import IMAGE_SUFFIXES, image_files

    files: list[Path] = []
    missing: list[str] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = image_files(given)
            if not found:
                raise UserError(
                    f"--input {given} is a directory with no image files ({', '.join(IMAGE_SUFFIXES)}) in it",
                    where=str(given),
                    hint="pass a directory of pictures, or the image files themselves",
                )
            console.info(f"--input {given}: a directory, taking its {len(found)} image file(s) sorted by name")
            files.extend(found)
        elif given.exists():
            files.append(given)
        else:
            missing.append(str(given))
    if missing:
        raise UserError(
            f"input file(s) not found: {', '.join(missing)}",
            hint="pass existing image files, or a directory of them, to --input",
        )
    return files


def compile_backend(stage_cfg: StageConfig, host: PluginHost) -> Any:
    """The compilation backend the config's ``compile.backend`` names, built."""
    from hat.deploy.compile_backend import compile_backend_name

    name = compile_backend_name(stage_cfg.config.data)
    backends = host.compile_backends.items
    if name not in backends:
        raise ConfigError(f"unknown compilation backend {name!r}", hint=f"installed: {', '.join(sorted(backends))}")
    return backends[name]()
