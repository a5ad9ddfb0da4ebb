"""Data loaders for the loops: deterministic per epoch, split over ranks, resumable.

Configs describe a ``DataLoader`` the usual way (``dataset``, ``batch_size``,
``shuffle``, ``num_workers``, ...). The engine replaces any sampler with an
:class:`EpochSampler`: the order of epoch ``e`` is a function of ``(seed, e)``, ranks take
interleaved shares of it (as ``DistributedSampler`` does, so one process with batch
2B sees exactly the samples two ranks with batch B see), and a resumed run can skip
the batches the interrupted run already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from hat import distributed
from hat.engine.worker_errors import UserErrorLoader
from hat.errors import ConfigError
from hat.registry import Registry, check_argument_types


class EpochSampler(Sampler[int]):
    def __init__(self, size: int, *, shuffle: bool, seed: int, pad: bool = True) -> None:
        """``pad``: repeat a few indices so every rank gets the same count (training);
        without it (evaluation) every sample is seen exactly once."""
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select epoch ``epoch``'s order and drop its first ``skip`` indices of this rank."""
        self.epoch = epoch
        self.skip = skip

    def _share(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world > 1 and self.size % self.world:
            extra = self.world - self.size % self.world  # may exceed size: repeat the order as needed
            order += (order * -(-extra // self.size))[:extra]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._share()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self._share()) - self.skip)


def build_loader(
    cfg: Mapping[str, Any],
    registry: Registry,
    *,
    seed: int,
    train: bool,
    path: str,
    locate=None,
) -> DataLoader:
    """Build a DataLoader from its config with an :class:`EpochSampler`.

    It is a :class:`~hat.engine.worker_errors.UserErrorLoader`: a user error raised in a
    worker process reaches the user as it was raised, not wrapped in the worker's traceback.
    """
    if not isinstance(cfg, Mapping) or "dataset" not in cfg:
        raise ConfigError(
            f"{path} must be a data loader config with a 'dataset'", where=locate(path) if locate else None
        )
    cfg = dict(cfg)
    cfg.pop("type", None)  # DataLoader (or torch.utils.data.DataLoader) by definition
    shuffle = bool(cfg.pop("shuffle", train))
    cfg.pop("sampler", None)  # replaced: see the module doc
    dataset = registry.build(cfg.pop("dataset"), path=f"{path}.dataset", locate=locate)
    rest = registry.build(cfg, path=path, locate=locate)
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, pad=train)
    # The loader's own generator (re-seeded per epoch in set_loader_epoch) draws the
    # worker seeds, so iterating never consumes the global RNG that a resume restores.
    rest.setdefault("generator", torch.Generator().manual_seed(seed))
    where = locate or (lambda _path: None)
    check_argument_types(DataLoader, rest, path, where)
    try:
        return UserErrorLoader(dataset, sampler=sampler, **rest)  # a worker's UserError stays one message
    except (TypeError, ValueError) as exc:  # batch_size=0, num_workers=-1: name the key and where it was set
        key = next((k for k in sorted(rest, key=len, reverse=True) if k in str(exc)), None)
        raise ConfigError(
            f"bad data loader option at {path}{'.' + key if key else ''}: {exc}",
            where=where(f"{path}.{key}" if key else path),
            hint="correct the value where it is set (`hat config show` prints the resolved config)",
        ) from exc


def set_loader_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Position the loader at ``epoch``, ``skip_batches`` batches in."""
    sampler = loader.sampler
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, skip_batches * (loader.batch_size or 1))
        if loader.generator is not None:
            loader.generator.manual_seed(sampler.seed + 1_000_003 * (epoch + 1))
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
