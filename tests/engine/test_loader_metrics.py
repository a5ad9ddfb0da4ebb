"""EpochSampler and build_loader, the Metric base class, and the Checkpoint callback's keep_n / mode."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from hat.engine.checkpoint_io import load_checkpoint
from hat.engine.loader import EpochSampler, build_loader, set_loader_epoch
from hat.errors import ConfigError
from hat.metrics import Metric
from hat.plugins import PluginHost
from hat.testing import run_cli

# -- EpochSampler ------------------------------------------------------------------------------


def _sampler(size: int, *, epoch: int = 0, rank: int = 0, world: int = 1, **kwargs) -> EpochSampler:
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("seed", 7)
    sampler = EpochSampler(size, **kwargs)
    sampler.rank, sampler.world = rank, world  # simulate a rank of a torchrun job
    sampler.set_epoch(epoch)
    return sampler


def test_same_seed_and_epoch_same_order_other_epochs_differ() -> None:
    order = list(_sampler(50, epoch=3))
    assert order == list(_sampler(50, epoch=3))
    assert sorted(order) == list(range(50)), "an epoch is a permutation of the dataset"
    assert order != list(range(50))
    assert order != list(_sampler(50, epoch=4))
    assert order != list(_sampler(50, epoch=3, seed=8))
    # set_epoch on one sampler object moves it to that epoch's order, and back
    sampler = _sampler(50, epoch=0)
    sampler.set_epoch(3)
    assert list(sampler) == order


def test_without_shuffle_the_order_is_the_dataset_order() -> None:
    assert list(_sampler(9, epoch=5, shuffle=False)) == list(range(9))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shares_are_disjoint_and_interleave_to_the_single_process_order(world: int) -> None:
    size = 24  # divisible by every world size here: no padding
    single = list(_sampler(size, epoch=2))
    shares = [list(_sampler(size, epoch=2, rank=r, world=world)) for r in range(world)]
    assert all(len(share) == size // world for share in shares)
    assert set().union(*map(set, shares)) == set(range(size))
    assert sum(len(s) for s in shares) == size, "disjoint"
    interleaved = [share[i] for i in range(size // world) for share in shares]
    assert interleaved == single


def test_training_pads_so_every_rank_gets_the_same_count() -> None:
    size, world = 11, 2
    single = list(_sampler(size, epoch=1))
    shares = [list(_sampler(size, epoch=1, rank=r, world=world, pad=True)) for r in range(world)]
    assert [len(s) for s in shares] == [6, 6]
    interleaved = [share[i] for i in range(6) for share in shares]
    assert interleaved[:size] == single
    assert interleaved[size:] == single[:1], "the padding repeats the start of the epoch's order"


@pytest.mark.parametrize(("size", "world"), [(1, 4), (2, 8), (3, 8), (5, 4)])
def test_padding_covers_datasets_smaller_than_the_world(size: int, world: int) -> None:
    """Equal counts on every rank even when fewer samples than ranks (else DDP would hang)."""
    shares = [list(_sampler(size, rank=r, world=world, pad=True)) for r in range(world)]
    per_rank = -(-size // world)
    assert [len(s) for s in shares] == [per_rank] * world
    assert set().union(*map(set, shares)) == set(range(size))


@pytest.mark.parametrize(("size", "world"), [(11, 2), (10, 3), (2, 4)])
def test_evaluation_sees_every_sample_exactly_once(size: int, world: int) -> None:
    shares = [list(_sampler(size, rank=r, world=world, pad=False, shuffle=False)) for r in range(world)]
    counts = Counter(i for share in shares for i in share)
    assert counts == Counter(range(size))
    assert [len(_sampler(size, rank=r, world=world, pad=False)) for r in range(world)] == [len(s) for s in shares]


@pytest.mark.parametrize("world", [1, 2])
def test_skip_drops_exactly_the_first_indices_of_the_rank(world: int) -> None:
    for rank in range(world):
        full = list(_sampler(21, epoch=4, rank=rank, world=world))
        for skip in (0, 1, 5, len(full), len(full) + 3):
            sampler = _sampler(21, epoch=0, rank=rank, world=world)
            sampler.set_epoch(4, skip)
            assert list(sampler) == full[skip:]
            assert len(sampler) == max(0, len(full) - skip)
    sampler.set_epoch(4)  # a new set_epoch without skip starts from the beginning again
    assert len(sampler) == len(full)


# -- build_loader ------------------------------------------------------------------------------


class RangeData(torch.utils.data.Dataset):
    def __init__(self, size: int = 10) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


@pytest.fixture(scope="module")
def registry():
    host = PluginHost(entry_points=False)
    host.registry.scoped("test-loader").add(RangeData)
    return host.registry


def _loader_cfg(**overrides) -> dict:
    return {"type": "DataLoader", "dataset": {"type": "RangeData", "size": 22}, "batch_size": 4, **overrides}


def _batches(loader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


def test_build_loader_replaces_the_sampler(registry) -> None:
    cfg = _loader_cfg(shuffle=True, sampler={"type": "SequentialSampler", "data_source": [1, 2]})
    loader = build_loader(cfg, registry, seed=5, train=True, path="t.data_loader")
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert isinstance(loader.sampler, EpochSampler)
    assert loader.sampler.shuffle and loader.sampler.seed == 5 and loader.sampler.pad
    assert isinstance(loader.dataset, RangeData) and loader.dataset.size == 22
    assert loader.batch_size == 4 and len(loader) == 6

    set_loader_epoch(loader, 1)
    epoch1 = _batches(loader)
    assert sorted(i for b in epoch1 for i in b) == list(range(22))
    assert _batches(loader) == epoch1, "iterating twice in one epoch gives the same order"
    set_loader_epoch(loader, 2)
    assert _batches(loader) != epoch1

    # the same config and seed in another process (another loader object) gives the same epoch
    again = build_loader(cfg, registry, seed=5, train=True, path="t.data_loader")
    set_loader_epoch(again, 1)
    assert _batches(again) == epoch1


def test_eval_loader_is_unshuffled_and_unpadded(registry) -> None:
    loader = build_loader(_loader_cfg(), registry, seed=0, train=False, path="v")
    assert not loader.sampler.shuffle and not loader.sampler.pad
    assert [i for b in _batches(loader) for i in b] == list(range(22))
    shuffled_train = build_loader(_loader_cfg(), registry, seed=0, train=True, path="t")
    assert shuffled_train.sampler.shuffle, "training shuffles unless the config says shuffle: false"


def test_set_loader_epoch_skips_whole_batches(registry) -> None:
    loader = build_loader(_loader_cfg(shuffle=True), registry, seed=3, train=True, path="t")
    set_loader_epoch(loader, 2)
    full = _batches(loader)
    for skip in (1, 3, 5):
        set_loader_epoch(loader, 2, skip_batches=skip)
        assert len(loader) == len(full) - skip
        assert _batches(loader) == full[skip:]
    set_loader_epoch(loader, 2)
    assert _batches(loader) == full


def test_build_loader_errors_are_config_errors(registry) -> None:
    with pytest.raises(ConfigError, match="must be a data loader config with a 'dataset'"):
        build_loader({"type": "DataLoader", "batch_size": 2}, registry, seed=0, train=True, path="x.loader")
    with pytest.raises(ConfigError, match="bad data loader option at x.loader"):
        build_loader(_loader_cfg(batch_sise=2), registry, seed=0, train=True, path="x.loader")
    with pytest.raises(ConfigError, match="unknown type 'NoSuchData'"):
        build_loader(_loader_cfg(dataset={"type": "NoSuchData"}), registry, seed=0, train=True, path="x")


# -- Metric ------------------------------------------------------------------------------------


class MeanAbs(Metric):
    name = "mean_abs"
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64))
        self.add_state("count", torch.tensor(0))

    def update(self, batch, outputs) -> None:
        self.total += (outputs - batch).abs().sum().double()  # in place: must not touch the default
        self.count += outputs.numel()

    def _compute(self) -> dict[str, float]:
        return {"mean_abs": float(self.total / self.count.clamp(min=1))}


class Median(Metric):
    name = "median"

    def __init__(self) -> None:
        super().__init__()
        self.add_state("values", [], reduce="cat")

    def update(self, batch, outputs) -> None:
        self.values.extend(outputs.tolist())

    def _compute(self) -> dict[str, float]:
        values = sorted(self.values)
        return {"median": values[len(values) // 2] if values else float("nan"), "n": len(values)}


def test_sum_state_metric_computes_twice_and_resets() -> None:
    metric = MeanAbs()
    metric.update(torch.zeros(4), torch.tensor([1.0, -1.0, 2.0, 0.0]))
    assert metric.compute() == {"mean_abs": 1.0}
    assert metric.compute() == {"mean_abs": 1.0}, "compute() must not consume the state"
    metric.update(torch.zeros(2), torch.tensor([4.0, 4.0]))
    assert metric.compute() == {"mean_abs": pytest.approx(12.0 / 6)}
    metric.reset()
    assert float(metric.total) == 0.0 and int(metric.count) == 0
    assert metric.compute() == {"mean_abs": 0.0}
    metric.update(torch.zeros(1), torch.tensor([3.0]))
    assert metric.compute() == {"mean_abs": 3.0}
    assert MeanAbs().compute() == {"mean_abs": 0.0}, "a fresh metric shares no state with another"


def test_cat_state_metric_computes_twice_and_resets() -> None:
    metric = Median()
    metric.update(None, torch.tensor([5.0, 1.0, 3.0]))
    first = metric.compute()
    assert first == {"median": 3.0, "n": 3.0}
    assert metric.compute() == first
    assert metric.values == [5.0, 1.0, 3.0]
    metric.update(None, torch.tensor([10.0, 11.0]))
    assert metric.compute() == {"median": 5.0, "n": 5.0}
    metric.reset()
    assert metric.values == []
    assert Median().compute()["n"] == 0.0, "appending to one metric's list must not leak into the default"


def test_add_state_rejects_an_unknown_reduce_mode() -> None:
    metric = Metric()
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'cat', got 'mean'"):
        metric.add_state("x", torch.tensor(0.0), reduce="mean")
    assert not hasattr(metric, "x")
    assert "name='metric'" in repr(metric) and "higher_is_better=True" in repr(metric)


# -- Checkpoint callback: keep_n and mode, through the CLI on the toy task --------------------


def _validations(work: Path) -> list[dict]:
    log = [json.loads(line) for line in (work / "logs" / "float.jsonl").read_text().splitlines()]
    return [r for r in log if r["event"] == "validation"]


def _train_toy(capsys, work: Path, checkpoint: str, *settings: str) -> None:
    extra = [arg for setting in settings for arg in ("--set", setting)]
    code, _, err = run_cli(
        "train",
        "toy",
        "--stage",
        "float",
        "--work-dir",
        str(work),
        "--set",
        f"float_trainer.callbacks.3={checkpoint}",
        *extra,
    )
    assert code == 0, err


def test_keep_n_keeps_the_newest_numbered_checkpoints(toy_engine_host, capsys, tmp_path: Path) -> None:
    _train_toy(capsys, tmp_path, "{type: Checkpoint, monitor_metric_key: mse, mode: min, keep_n: 2}")
    names = sorted(p.name for p in tmp_path.glob("*.pth.tar"))
    assert names == [
        "float-checkpoint-best.pth.tar",
        "float-checkpoint-epoch-3.pth.tar",
        "float-checkpoint-epoch-4.pth.tar",
        "float-checkpoint-last.pth.tar",
    ]
    assert not list(tmp_path.glob(".*tmp*")), "no temp file left behind"
    epoch3 = load_checkpoint(tmp_path / "float-checkpoint-epoch-3.pth.tar")
    epoch4 = load_checkpoint(tmp_path / "float-checkpoint-epoch-4.pth.tar")
    last = load_checkpoint(tmp_path / "float-checkpoint-last.pth.tar")
    assert (epoch3["global_step"], epoch3["epoch"]) == (24, 3)
    assert (epoch4["global_step"], epoch4["epoch"]) == (32, 4) == (last["global_step"], last["epoch"])
    assert all(torch.equal(epoch4["model"][k], last["model"][k]) for k in last["model"])


def test_mode_picks_the_best_by_direction(toy_engine_host, capsys, tmp_path: Path) -> None:
    best = {}
    for mode in ("min", "max"):
        work = tmp_path / mode
        _train_toy(capsys, work, f"{{type: Checkpoint, monitor_metric_key: mse, mode: {mode}}}")
        validations = _validations(work)
        assert len(validations) == 4
        pick = min if mode == "min" else max
        chosen = pick(validations, key=lambda r: r["mse"])
        best[mode] = load_checkpoint(work / "float-checkpoint-best.pth.tar")
        assert best[mode]["metrics"]["mse"] == pytest.approx(chosen["mse"], rel=1e-12)
        assert best[mode]["global_step"] == chosen["step"]
        assert best[mode]["callbacks"]["Checkpoint"]["best"] == pytest.approx(chosen["mse"], rel=1e-12)
    assert best["min"]["global_step"] != best["max"]["global_step"]
    assert best["min"]["metrics"]["mse"] < best["max"]["metrics"]["mse"]


def test_a_validation_only_at_the_end_still_gives_a_best_checkpoint(toy_engine_host, capsys, tmp_path: Path) -> None:
    # The validation runs at loop end, after the last epoch's checkpoint was written without the metric.
    checkpoint = "{type: Checkpoint, monitor_metric_key: mse, mode: min}"
    _train_toy(capsys, tmp_path, checkpoint, "float_trainer.callbacks.2.val_interval=100")
    validations = _validations(tmp_path)
    assert len(validations) == 1
    best = load_checkpoint(tmp_path / "float-checkpoint-best.pth.tar")
    assert best["metrics"]["mse"] == pytest.approx(validations[0]["mse"], rel=1e-12)
    assert best["global_step"] == validations[0]["step"] == 32
