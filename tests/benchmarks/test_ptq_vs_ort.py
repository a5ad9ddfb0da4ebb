"""benchmarks/ptq_vs_ort.py feeds every quantizer the samples HAT's calibrator reads, in its order.

The comparison is only fair if HAT, onnxruntime's ``quantize_static`` and NNCF calibrate on
the same data: these tests run the real calibrator on the engine's toy task and compare
what it fed its model with the benchmark's samples, then check that the onnxruntime data
reader and the NNCF dataset hand those samples on one by one, in order. The NNCF test needs
nncf (a benchmark-only dependency, benchmarks/requirements.txt) and is skipped without it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from hat.errors import UserError
from hat.testing import host_fixture

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

fcos3d_host = host_fixture("hat_fcos3d.plugin", "hat-fcos3d")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script as a module (it imports its siblings ``_common`` and ``quant_fidelity``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("ptq_vs_ort")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _numbered(count: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full((1, 4), float(i), dtype=np.float32)} for i in range(count)]


def test_samples_are_the_batches_the_calibrator_reads_in_its_order(
    bench: ModuleType, toy_engine_host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hat.engine.calibrator import Calibrator
    from hat.usecases import stages

    # 64 samples in batches of 8 is 8 batches an epoch: 11 steps go on into epoch 1's order
    cfg = stages.load_stage_config(
        "toy", overrides=["calibration_trainer.num_steps=11"], work_dir=tmp_path / "w", host=toy_engine_host
    )
    stages.train(cfg, "float", host=toy_engine_host)
    fed: list[torch.Tensor] = []
    emit = Calibrator.emit

    def recording_emit(self, hook, state, **kwargs):
        if hook == "on_step_end":
            fed.append(kwargs["batch"]["x"].clone())
        return emit(self, hook, state, **kwargs)

    monkeypatch.setattr(Calibrator, "emit", recording_emit)
    stages.train(cfg, "calibration", host=toy_engine_host)
    monkeypatch.undo()

    samples = bench.calibration_samples(cfg, toy_engine_host, {"x": "x"})
    assert len(fed) == 11 and len(samples) == 88
    assert all(s["x"].shape == (1, 4) and s["x"].dtype == np.float32 for s in samples)
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in samples]), torch.cat(fed).numpy())
    # the calibrator's loader is a training one (shuffled): not the dataset in storage order,
    # and epoch 1 is not epoch 0 again
    stored = torch.from_numpy(np.concatenate([s["x"] for s in samples[:64]]))
    dataset = toy_engine_host.registry.build(cfg.config["train_loader"]["dataset"], path="train_loader.dataset")
    assert not torch.equal(stored, dataset.x)
    assert sorted(map(tuple, stored.tolist())) == sorted(map(tuple, dataset.x.tolist()))
    assert not np.array_equal(samples[64]["x"], samples[0]["x"])


def test_the_onnxruntime_reader_feeds_each_sample_once_in_order_and_rewinds(bench: ModuleType) -> None:
    samples = _numbered(5)
    reader = bench.SampleReader(samples)
    first = list(iter(reader.get_next, None))
    assert [float(s["x"][0, 0]) for s in first] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert reader.get_next() is None  # exhausted: onnxruntime stops there
    reader.rewind()
    assert [id(s) for s in iter(reader.get_next, None)] == [id(s) for s in samples]


def test_the_nncf_dataset_yields_the_samples_in_order(bench: ModuleType) -> None:
    pytest.importorskip("nncf", reason="nncf is a benchmark-only dependency (benchmarks/requirements.txt)")
    samples = _numbered(7)
    dataset = bench.nncf_dataset(samples)
    assert dataset.get_length() == 7
    assert [id(s) for s in dataset.get_inference_data()] == [id(s) for s in samples]


def test_without_nncf_its_rows_are_skipped_unless_asked_for(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    peers, notes = bench.choose_peers(None)
    assert peers == ["ort"]
    assert len(notes) == 1 and "pip install -c constraints.txt -r benchmarks/requirements.txt" in notes[0]
    with pytest.raises(UserError, match="nncf, which is not installed") as caught:
        bench.choose_peers("ort,nncf")
    assert "benchmarks/requirements.txt" in caught.value.render()
    assert bench.choose_peers("ort") == (["ort"], [])
    with pytest.raises(UserError, match="unknown peer 'tflite'"):
        bench.choose_peers("ort,tflite")


def test_fcos3d_gets_the_demo_config_with_its_data_and_raw_dataset_in_the_work_dir(
    bench: ModuleType, fcos3d_host
) -> None:
    recipe = fcos3d_host.task("fcos3d").demo
    config, settings = bench.demo_config(fcos3d_host, "fcos3d", Path("/w"), None)
    assert config == recipe.config
    assert f"{recipe.data_root_key}={Path('/w/data')}" in settings
    assert recipe.raw_root_key == "nuscenes_root" and f"nuscenes_root={Path('/w/raw')}" in settings
    assert bench.demo_config(fcos3d_host, "fcos3d", Path("/w"), "other")[0] == "other"
