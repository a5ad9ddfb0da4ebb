"""A third-party quantization backend and compilation backend, plugged in through their hooks.

The plugin below lives in no installed distribution: it is registered in-process as
``hat-thirdparty`` next to the engine's toy task. Its backends wrap core's own
(TorchNativeBackend, OnnxRuntimeBackend) so the chain still produces a real int8 model,
and record every call, so the tests can tell that the backend named in the config is
the one that ran, not core's default.

Where a config chooses them (docs/plugins.md): a quantization backend by a
``model_convert_pipeline``'s ``quant_backend: NAME``, a compilation backend by
``compile: {backend: NAME}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hat.deploy.ort_backend import OnnxRuntimeBackend
from hat.hookspecs import hookimpl
from hat.plugins import PluginHost
from hat.quant.backend import TorchNativeBackend
from hat.testing import run_cli, use_host
from tests.engine.toy_task import DIST as TOY_DIST
from tests.engine.toy_task import ToyEnginePlugin

THIRD_PARTY = "hat-thirdparty"
QUANT = "recording_quant"
COMPILE = "recording_ort"

#: (backend name, method) of every call, in order; cleared by the fixture.
CALLS: list[tuple[str, str]] = []


class RecordingQuantBackend(TorchNativeBackend):
    """core's torch-native backend, under another name, recording each call."""

    name = QUANT

    def prepare_calibration(self, model, qconfig_params):
        CALLS.append((self.name, "prepare_calibration"))
        assert "deploy_target" in qconfig_params  # the converters hand the target down
        return super().prepare_calibration(model, qconfig_params)

    def prepare_qat(self, model, qconfig_params):
        CALLS.append((self.name, "prepare_qat"))
        return super().prepare_qat(model, qconfig_params)

    def convert_fixed(self, model):
        CALLS.append((self.name, "convert_fixed"))
        return super().convert_fixed(model)


class RecordingCompileBackend(OnnxRuntimeBackend):
    """core's onnxruntime backend, under another name, recording each call."""

    name = COMPILE

    def compile(self, onnx_path: Path, opt_level: int, out_path: Path) -> Path:
        CALLS.append((self.name, "compile"))
        return super().compile(onnx_path, opt_level, out_path)

    def session(self, path: Path, *, threads: int, opt_level: int) -> Any:
        CALLS.append((self.name, "session"))
        return super().session(path, threads=threads, opt_level=opt_level)

    def run(self, session: Any, inputs: dict) -> dict:
        CALLS.append((self.name, "run"))
        return super().run(session, inputs)

    def measure_latency(self, path: Path, inputs: dict, **kwargs: Any) -> dict:
        CALLS.append((self.name, "measure_latency"))
        return super().measure_latency(path, inputs, **kwargs)

    def profile_op_types(self, path: Path, inputs: dict, **kwargs: Any) -> dict:
        CALLS.append((self.name, "profile_op_types"))
        return super().profile_op_types(path, inputs, **kwargs)


class ThirdPartyPlugin:
    """What a vendor's plugin module would hold: two hooks, each returning name -> factory."""

    __name__ = "thirdparty"

    @hookimpl
    def hat_quant_backends(self) -> dict[str, type]:
        return {RecordingQuantBackend.name: RecordingQuantBackend}

    @hookimpl
    def hat_compile_backends(self) -> dict[str, type]:
        return {RecordingCompileBackend.name: RecordingCompileBackend}


@pytest.fixture()
def thirdparty_host() -> Iterator[PluginHost]:
    """Core, the engine's toy task and the third-party backends, as the process-wide host."""
    CALLS.clear()
    with use_host((ToyEnginePlugin(), TOY_DIST), (ThirdPartyPlugin(), THIRD_PARTY)) as host:
        yield host
    CALLS.clear()


def _methods(backend: str) -> list[str]:
    return [method for name, method in CALLS if name == backend]


def test_the_host_collects_third_party_backends_beside_cores(thirdparty_host: PluginHost) -> None:
    quant, compile_ = thirdparty_host.quant_backends, thirdparty_host.compile_backends
    assert quant.items[QUANT] is RecordingQuantBackend and quant.owners[QUANT] == THIRD_PARTY
    assert compile_.items[COMPILE] is RecordingCompileBackend and compile_.owners[COMPILE] == THIRD_PARTY
    assert quant.owners[TorchNativeBackend.name] == "hat-core"
    assert compile_.owners[OnnxRuntimeBackend.name] == "hat-core"

    code, out, err = run_cli("list", "--json")
    assert code == 0, err
    backends = {(b["kind"], b["name"]): b["plugin"] for b in json.loads(out)["backends"]}
    assert backends[("quantization", QUANT)] == THIRD_PARTY
    assert backends[("compilation", COMPILE)] == THIRD_PARTY
    assert backends[("quantization", "torch_native")] == "hat-core"
    assert backends[("compilation", "onnxruntime")] == "hat-core"


def test_a_backend_name_claimed_twice_names_both_distributions() -> None:
    from hat.errors import PluginError

    class Clash:
        __name__ = "clash"

        @hookimpl
        def hat_compile_backends(self) -> dict[str, type]:
            return {"onnxruntime": RecordingCompileBackend}

    with pytest.raises(PluginError, match=r"compilation backend 'onnxruntime' is claimed twice") as caught:
        PluginHost(entry_points=False, extra=[(Clash(), "hat-clash")])
    assert "hat-core" in str(caught.value) and "hat-clash" in str(caught.value)


def test_the_configs_backends_run_calibration_export_check_compile_and_qat(
    thirdparty_host: PluginHost, tmp_path: Path
) -> None:
    work = ["--work-dir", str(tmp_path)]
    code, _, err = run_cli("train", "toy", "--stage", "float", *work)
    assert code == 0, err
    assert CALLS == []  # float training quantizes nothing

    # calibration with the third-party quantization backend, chosen by name in the pipeline
    chosen = [
        "--set",
        f"calibration_trainer.model_convert_pipeline.quant_backend={QUANT}",
        "--set",
        f"calibration_predictor.model_convert_pipeline.quant_backend={QUANT}",
    ]
    code, _, err = run_cli("train", "toy", "--stage", "calibration", *work, *chosen)
    assert code == 0, err
    assert _methods(QUANT) == ["prepare_calibration"]

    # export: the calibration predictor's pipeline (same backend) and its fixed-point conversion
    CALLS.clear()
    code, _, err = run_cli("export", "toy", "--stage", "calibration", *work, *chosen)
    assert code == 0, err
    assert _methods(QUANT) == ["prepare_calibration", "convert_fixed"]
    assert (tmp_path / "export" / "model.onnx").is_file()

    # compile with the third-party compilation backend, chosen by compile.backend
    CALLS.clear()
    code, _, err = run_cli("compile", "toy", "--opt", "2", "--runs", "2", *work, "--set", f"compile.backend={COMPILE}")
    assert code == 0, err
    assert _methods(COMPILE)[0] == "compile"
    assert {"compile", "measure_latency", "profile_op_types"} <= set(_methods(COMPILE))
    perf = json.loads((tmp_path / "compile" / "perf.json").read_text())
    assert perf["opt_level"] == 2 and perf["latency"]["int8"]["median_ms"] > 0
    assert (tmp_path / "compile" / "model.opt2.onnx").is_file()

    # check compiles and runs through the same backend
    CALLS.clear()
    code, _, err = run_cli(
        "check", "toy", "--stage", "calibration", *work, *chosen, "--set", f"compile.backend={COMPILE}"
    )
    assert code == 0, err
    assert {"compile", "session", "run"} <= set(_methods(COMPILE))
    assert "convert_fixed" in _methods(QUANT)

    # QAT (from the calibration checkpoint) prepares through the named backend as well
    CALLS.clear()
    qat = ["--set", f"qat_trainer.model_convert_pipeline.quant_backend={QUANT}", "--set", "qat_trainer.num_epochs=1"]
    code, _, err = run_cli("train", "toy", "--stage", "qat", *work, *qat)
    assert code == 0, err
    assert _methods(QUANT) == ["prepare_qat"]

    # without the choice, core's defaults run and the recorder sees nothing
    CALLS.clear()
    code, _, err = run_cli("compile", "toy", "--opt", "1", "--runs", "1", *work, "--set", "compile.backend=onnxruntime")
    assert code == 0, err
    assert _methods(COMPILE) == []


def test_an_unknown_backend_name_is_a_usage_error_listing_the_installed_ones(
    thirdparty_host: PluginHost, tmp_path: Path
) -> None:
    work = ["--work-dir", str(tmp_path)]
    code, _, err = run_cli("train", "toy", "--stage", "float", *work)
    assert code == 0, err
    code, _, err = run_cli(
        "train",
        "toy",
        "--stage",
        "calibration",
        *work,
        "--set",
        "calibration_trainer.model_convert_pipeline.quant_backend=nope",
    )
    assert code == 2, err
    assert "unknown quantization backend 'nope'" in err and QUANT in err and "torch_native" in err


def test_int_infer_and_validate_run_through_the_configs_compile_backend(
    thirdparty_host: PluginHost, tmp_path: Path
) -> None:
    work = ["--work-dir", str(tmp_path), "--set", f"compile.backend={COMPILE}"]
    for args in (("train", "toy", "--stage", "float"), ("train", "toy", "--stage", "calibration")):
        code, _, err = run_cli(*args, *work)
        assert code == 0, err
    code, _, err = run_cli("export", "toy", "--stage", "calibration", *work)
    assert code == 0, err
    CALLS.clear()
    code, _, err = run_cli("predict", "toy", "--stage", "int_infer", *work)
    assert code == 0, err
    code, _, err = run_cli("validate", "toy", *work)
    assert code == 0, err
    assert "run" in _methods(COMPILE)
