"""Deploy commands on bad work dirs, through the CLI on the engine's toy task (issue 12).

A model copied over ``export/model.onnx`` (or ``model.float.onnx``), a corrupt
``export.json``, or one written before export recorded hashes must stop compile,
validate and ``predict --stage int_infer`` before any work: exit 2, naming the file and
the command that writes it again, with the work dir in that command, and without
writing a report measured on the wrong model. Hints for a missing step keep
``--work-dir``; torch's exporter noise does not leak through ``--quiet``.

The float/calibration/export work dir is built once per module and copied per test.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from hat.testing import run_cli, use_host

EXPORT = Path("export")


def _one_relu_model(path: Path) -> None:
    """A valid ONNX model that is not the toy's: one Relu, input ``x``, output ``y``."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _replace_model(work: Path) -> None:
    _one_relu_model(work / EXPORT / "model.onnx")


def _replace_float_model(work: Path) -> None:
    _one_relu_model(work / EXPORT / "model.float.onnx")


def _corrupt_info(work: Path) -> None:
    path = work / EXPORT / "export.json"
    path.write_text(path.read_text()[:40])  # truncated mid-object


def _info_without_hashes(work: Path) -> None:
    """export.json as HAT wrote it before it recorded the models' hashes."""
    path = work / EXPORT / "export.json"
    info = json.loads(path.read_text())
    del info["files"]
    path.write_text(json.dumps(info))


@dataclass(frozen=True)
class BadInput:
    """One bad work dir for one command: what the error must name, what must not be written."""

    spoil: Callable[[Path], None]
    command: tuple[str, ...]
    names: tuple[str, ...]
    not_written: tuple[str, ...]
    also: tuple[str, ...] = field(default=())


COMPILE = ("compile", "toy", "--runs", "2")
VALIDATE = ("validate", "toy", "--max-batches", "1")
INT_INFER = ("predict", "toy", "--stage", "int_infer")
NOT_WRITTEN = {
    COMPILE: ("compile/perf.json", "compile/perf.html"),
    VALIDATE: ("validate.json",),
    INT_INFER: ("predict/int_infer.json",),
}

BAD_INPUTS = {
    **{
        f"foreign model.onnx: {cmd[0]} {cmd[-1]}": BadInput(
            _replace_model,
            cmd,
            ("export/model.onnx", "is not the model `hat export` wrote"),
            NOT_WRITTEN[cmd],
            ("inputs ['x'] -> outputs ['y']", "inputs ['x'] -> outputs ['pred']"),  # what it is, what export wrote
        )
        for cmd in (COMPILE, VALIDATE, INT_INFER)
    },
    "foreign model.float.onnx: compile": BadInput(
        _replace_float_model, COMPILE, ("export/model.float.onnx", "is not the model"), NOT_WRITTEN[COMPILE]
    ),
    **{
        f"corrupt export.json: {cmd[0]} {cmd[-1]}": BadInput(
            _corrupt_info, cmd, ("export/export.json", "is not valid JSON"), NOT_WRITTEN[cmd]
        )
        for cmd in (COMPILE, VALIDATE, INT_INFER)
    },
    "foreign model.onnx, export.json removed: predict int_infer": BadInput(
        lambda work: (_replace_model(work), (work / EXPORT / "export.json").unlink()),
        INT_INFER,
        ("export/export.json does not exist",),
        NOT_WRITTEN[INT_INFER],
    ),
    "export.json without hashes: compile": BadInput(
        _info_without_hashes, COMPILE, ("export/export.json", "records no hash"), NOT_WRITTEN[COMPILE]
    ),
}


@pytest.fixture(scope="module")
def exported_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy work dir trained (float, calibration) and exported, once for the module; never modified."""
    from tests.engine.toy_task import DIST, ToyEnginePlugin

    work = tmp_path_factory.mktemp("exported") / "work"
    with use_host((ToyEnginePlugin(), DIST)):
        for args in (
            ("train", "toy", "--stage", "float"),
            ("train", "toy", "--stage", "calibration"),
            ("export", "toy"),
        ):
            code, _, err = run_cli(*args, "--work-dir", str(work))
            assert code == 0, (args, err)
    return work


@pytest.fixture()
def work(exported_work: Path, tmp_path: Path) -> Path:
    """This test's own copy of the exported work dir."""
    return Path(shutil.copytree(exported_work, tmp_path / "work"))


def _contents(work: Path) -> dict[str, bytes]:
    """Every file's bytes but config.yaml's, which records the last command run (predict rewrites it first)."""
    files = (p for p in sorted(work.rglob("*")) if p.is_file() and p.name != "config.yaml")
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


@pytest.mark.parametrize("case", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_a_bad_export_stops_the_deploy_commands_naming_the_file_and_the_fix(
    toy_engine_host, capsys, work: Path, case: BadInput
) -> None:
    case.spoil(work)
    before = _contents(work)
    code, out, err = run_cli(*case.command, "--work-dir", str(work))
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    flat = " ".join(err.split())  # the console wraps long lines
    for name in case.names:
        assert name in flat, (name, err)  # what, and where
    assert f"hat export toy --work-dir {work}" in flat, err  # next, in this work dir
    for text in case.also:
        assert text in flat, (text, err)
    assert _contents(work) == before  # nothing written over, nothing added
    for name in case.not_written:
        assert not (work / name).exists(), name


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("compile.runs=0", "compile.runs must be an integer >= 1, got 0"),
        ("compile.threads=-1", "compile.threads must be an integer >= 1, got -1"),
        ("compile.warmup=abc", "compile.warmup must be an integer >= 0, got 'abc'"),
        ("compile.runs=2.5", "compile.runs must be an integer >= 1, got 2.5"),
    ],
)
def test_a_bad_compile_count_is_a_usage_error_naming_the_set(
    toy_engine_host, capsys, work: Path, setting: str, says: str
) -> None:
    """Not the backend's bare ValueError (exit 1): what, where it was set, what next; nothing compiled."""
    code, out, err = run_cli("compile", "toy", "--work-dir", str(work), "--set", setting)
    flat = " ".join(err.split())
    assert code == 2, (out, err)
    assert says in flat and f"where: --set {setting}" in flat and "next:" in flat
    assert "Traceback" not in err + out and "the work failed" not in flat
    assert not (work / "compile").exists()


def test_check_exports_again_so_a_foreign_model_is_replaced_by_this_tasks(toy_engine_host, capsys, work: Path) -> None:
    """`hat check` is export + compile + run: it writes model.onnx itself, then checks what it wrote."""
    _replace_model(work)
    code, out, err = run_cli("check", "toy", "--work-dir", str(work))
    assert code == 0, err
    from hat.deploy.files import sha256_of

    info = json.loads((work / EXPORT / "export.json").read_text())
    assert info["files"]["model.onnx"]["sha256"] == sha256_of(work / EXPORT / "model.onnx")
    assert [i.name for i in onnx.load(str(work / EXPORT / "model.onnx")).graph.output] == ["pred"]


def test_infer_refuses_a_foreign_model_naming_it(toy_engine_host, work: Path, tmp_path: Path) -> None:
    """`hat infer` (the toy task has no infer section: the inferer is handed in)."""
    from hat.errors import UserError
    from hat.usecases.infer import run_infer
    from hat.usecases.stages import load_stage_config

    _replace_model(work)
    picture = tmp_path / "in.png"
    picture.write_bytes(b"not read")
    called = []
    stage_cfg = load_stage_config("toy", work_dir=work)
    with pytest.raises(UserError) as raised:
        run_infer(stage_cfg, [picture], tmp_path / "out", inferer=lambda *a: called.append(a) or [])
    message = raised.value.render()
    assert "export/model.onnx" in message and f"hat export toy --work-dir {work}" in message
    assert called == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("export", "toy"), "hat train toy --stage calibration --work-dir {work}"),
        (COMPILE, "hat export toy --work-dir {work}"),
        (VALIDATE, "hat export toy --work-dir {work}"),
        (INT_INFER, "hat export toy --work-dir {work}"),
        (("train", "toy", "--resume"), "hat train toy --stage float --work-dir {work}` without --resume"),
    ],
    ids=["export", "compile", "validate", "int_infer", "resume"],
)
def test_a_missing_step_is_hinted_in_the_work_dir_given(
    toy_engine_host, capsys, tmp_path: Path, command: tuple[str, ...], expected: str
) -> None:
    work = tmp_path / "elsewhere"
    code, out, err = run_cli(*command, "--work-dir", str(work))
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert expected.format(work=work) in " ".join(err.split()), err
    assert not (work / "compile").exists() and not (work / "predict").exists() and not (work / "validate.json").exists()


def test_command_for_names_the_work_dir_only_when_it_is_not_the_default() -> None:
    from hat.workdir import command_for, command_that_makes

    assert command_for("toy", "export", "hat-work/toy_engine", "toy_engine") == "hat export toy"
    assert command_for("toy", "export", Path("hat-work/toy_engine").resolve(), "toy_engine") == "hat export toy"
    assert command_for("toy", "export", "hat-work/other", "toy_engine") == "hat export toy --work-dir hat-work/other"
    assert command_for("toy", "train --stage qat", "/w") == "hat train toy --stage qat --work-dir /w"
    assert command_that_makes(Path("/w/float-checkpoint-best.pth.tar"), "toy") == (
        "hat train toy --stage float --work-dir /w"
    )


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "verbose"])
def test_export_keeps_torchs_exporter_warnings_out_of_quiet(
    toy_engine_host, capsys, work: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    """The toy model triggers no exporter warning itself: torch.onnx.export is made to raise the
    ones real models do (as torch's C++ passes do, attributed to a torch.onnx module)."""
    import torch

    real_export = torch.onnx.export

    def noisy_export(*args, **kwargs):
        for message in (
            "Constant folding - Only steps=1 can be constant folded for opset >= 10 onnx::Slice op. "
            "Constant folding not applied.",
            "some other exporter warning",
        ):
            warnings.warn_explicit(message, UserWarning, "utils.py", 1, module="torch.onnx.utils")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", noisy_export)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, out, err = run_cli("export", "toy", "--work-dir", str(work), quiet=quiet)
    assert code == 0, err
    assert "UserWarning" not in err and "Constant folding" not in err
    shown = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert not any("Constant folding" in m for m in shown), shown  # never actionable: always dropped
    assert ("some other exporter warning" in shown) is not quiet, shown  # the rest: dropped under --quiet only
