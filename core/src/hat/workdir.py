"""The names of what lands in a work directory: checkpoints, exports, reports, logs.

A stage writes files that later stages, commands and configs find again by name
(``${work_dir}/float-checkpoint-best.pth.tar``, ``export/model.onnx``). Every such name is
spelled here once, in the base layer, so the engine that writes a checkpoint, the
deploy library that writes a report and the commands that look for them cannot drift
apart. (Task YAML configs spell checkpoint paths themselves; they follow
:func:`checkpoint_name`.)

Layout of ``hat-work/<config name>/``::

    config.yaml                       the config the stage commands ran with
    <stage>-checkpoint-best.pth.tar   best by the monitored metric
    <stage>-checkpoint-last.pth.tar   for --resume
    <stage>-checkpoint-epoch-<k>.pth.tar / -step-<k>   numbered copies (keep_n)
    logs/<stage>.jsonl
    predict/<stage>.json
    export/model.onnx  export/model.float.onnx  export/export.json
    export/<graph>/...  compile/<graph>/...   (a task's further deploy graphs, e.g. motr's qim)
    export/check.opt<N>.onnx  export/check.json
    compile/model.opt<N>.onnx  compile/perf.json  compile/perf.html
    validate.json
    analysis/analysis.json  analysis/analysis.html   (hat analyze)
    raw/  data/  infer/  demo_report.json   (hat demo)
"""

from __future__ import annotations

import re
from pathlib import Path

#: The folder every default work directory lives in.
DEFAULT_ROOT = "hat-work"

CHECKPOINT_SUFFIX = ".pth.tar"
#: Checkpoint kinds the checkpoint callback always writes.
BEST = "best"
LAST = "last"
#: The stages that write checkpoints, as checkpoint file names start.
CHECKPOINT_STAGES = ("float", "calibration", "qat")

EXPORT_DIR = "export"
COMPILE_DIR = "compile"
PREDICT_DIR = "predict"
LOGS_DIR = "logs"

#: In ``export/``: the int8 QDQ model, the float model and what export recorded.
EXPORTED_MODEL = "model.onnx"
FLOAT_MODEL = "model.float.onnx"
EXPORT_INFO = "export.json"
#: In ``export/``: what `hat check` recorded.
CHECK_INFO = "check.json"
#: In ``compile/``: the performance report.
PERF_JSON = "perf.json"
PERF_HTML = "perf.html"
#: At the work directory's top: what `hat validate` recorded.
VALIDATE_INFO = "validate.json"
#: What `hat analyze` writes: the per-layer analysis, as JSON and as a self-contained page.
ANALYSIS_DIR = "analysis"
ANALYSIS_JSON = "analysis.json"
ANALYSIS_HTML = "analysis.html"
#: The config the work dir was made with (see :mod:`hat.workdir_config`).
RUN_CONFIG = "config.yaml"
#: What `hat demo` adds: synthetic raw data, the packed data, inference output, its report.
DEMO_RAW_DIR = "raw"
DEMO_DATA_DIR = "data"
DEMO_INFER_DIR = "infer"
DEMO_REPORT = "demo_report.json"

_CHECKPOINT_NAME = re.compile(
    r"^(" + "|".join(CHECKPOINT_STAGES) + r")-checkpoint-[\w.-]+" + re.escape(CHECKPOINT_SUFFIX) + "$"
)


def default_work_dir(config_name: str) -> Path:
    """``hat-work/<config name>``: where a stage command writes without ``--work-dir``."""
    return Path(DEFAULT_ROOT) / config_name


def demo_work_dir(task: str) -> Path:
    """``hat-work/demo-<task>``: where `hat demo` writes without ``--work-dir``."""
    return Path(DEFAULT_ROOT) / f"demo-{task}"


def checkpoint_name(stage: str, kind: str) -> str:
    """``<stage>-checkpoint-<kind>.pth.tar`` (kind: best, last, epoch-<k>, step-<k>)."""
    return f"{stage}-checkpoint-{kind}{CHECKPOINT_SUFFIX}"


def checkpoint_path(work_dir: Path, stage: str, kind: str) -> Path:
    """``<work-dir>/<stage>-checkpoint-<kind>.pth.tar``."""
    return Path(work_dir) / checkpoint_name(stage, kind)


def numbered_checkpoint_glob(stage: str) -> str:
    """The glob of a stage's numbered checkpoints (``<stage>-checkpoint-epoch-12.pth.tar``)."""
    return checkpoint_name(stage, "*-*")


def log_path(work_dir: Path, stage: str) -> Path:
    """``<work-dir>/logs/<stage>.jsonl``."""
    return Path(work_dir) / LOGS_DIR / f"{stage}.jsonl"


def prediction_path(work_dir: Path, stage: str) -> Path:
    """``<work-dir>/predict/<stage>.json``: what `hat predict` writes."""
    return Path(work_dir) / PREDICT_DIR / f"{stage}.json"


#: The name of a task's one (or first) deploy graph; see hat.engine.deploy_model.
MAIN_GRAPH = "model"


def _graph_folder(root: Path, graph: str | None) -> Path:
    return root if graph in (None, MAIN_GRAPH) else root / str(graph)


def export_dir(work_dir: Path, graph: str | None = None) -> Path:
    """``<work-dir>/export``, or ``export/<graph>`` for a task's further deploy graph."""
    return _graph_folder(Path(work_dir) / EXPORT_DIR, graph)


def compile_dir(work_dir: Path, graph: str | None = None) -> Path:
    """``<work-dir>/compile``, or ``compile/<graph>`` for a task's further deploy graph."""
    return _graph_folder(Path(work_dir) / COMPILE_DIR, graph)


def analysis_dir(work_dir: Path) -> Path:
    """``<work-dir>/analysis``."""
    return Path(work_dir) / ANALYSIS_DIR


def compiled_model_name(opt_level: int) -> str:
    """``model.opt<N>.onnx``: the compiled model in ``compile/``."""
    return f"model.opt{opt_level}.onnx"


def check_model_name(opt_level: int) -> str:
    """``check.opt<N>.onnx``: the model `hat check` compiles into ``export/``."""
    return f"check.opt{opt_level}.onnx"


def is_default_work_dir(work_dir: Path | str, config_name: str | None = None) -> bool:
    """Whether a stage command run without ``--work-dir`` would write to ``work_dir``.

    With ``config_name``: ``work_dir`` is ``hat-work/<config name>`` (either spelled
    relative to the current directory or resolved). Without it, only the shape is known:
    a folder right under ``hat-work/``.
    """
    work_dir = Path(work_dir)
    if config_name:
        default = default_work_dir(config_name)
        return work_dir == default or work_dir.resolve() == default.resolve()
    return len(work_dir.parts) == 2 and work_dir.parts[0] == DEFAULT_ROOT


def command_for(task: str, command: str, work_dir: Path | str | None = None, config_name: str | None = None) -> str:
    """``hat <command> <task> [options] [--work-dir W]``: the command a hint tells the user to run.

    ``command`` is the subcommand and its options (``"export"``, ``"train --stage
    calibration"``). A hint that drops ``--work-dir`` sends the user's next command to
    the default work dir, where it does the work again or finds nothing, so the work dir
    is named whenever it is not the default one (see :func:`is_default_work_dir`).
    """
    verb, _, options = command.partition(" ")
    text = f"hat {verb} {task}" + (f" {options}" if options else "")
    if work_dir is not None and not is_default_work_dir(work_dir, config_name):
        text += f" --work-dir {work_dir}"
    return text


def command_that_makes(path: Path, task: str) -> str | None:
    """The `hat` command that writes checkpoint ``path``, judged by its file name."""
    path = Path(path)
    match = _CHECKPOINT_NAME.match(path.name)
    if not match:
        return None
    return command_for(task, f"train --stage {match.group(1)}", path.parent)
