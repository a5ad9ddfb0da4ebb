"""A user error raised in a DataLoader worker reaches the user as it was raised (issue 12, item 11).

torch re-raises a worker's error with the worker's traceback pasted into its message, so
with ``num_workers > 0`` (hat_stages' default) a bad sample printed a traceback.
"""

from __future__ import annotations

import pytest
import torch

from hat.data.pack import IncompletePack
from hat.engine.loader import build_loader
from hat.engine.worker_errors import from_worker
from hat.errors import UserError
from hat.plugins import PluginHost

BAD_INDEX = 5


class BadSampleData(torch.utils.data.Dataset):
    """Sample 5 is missing what the dataset needs, as a pack of another dataset would be."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == BAD_INDEX:
            raise IncompletePack(
                f"sample {index} of pack /data/train_lmdb has no key 'img'",
                where="/data/train_lmdb",
                hint="re-pack it with `hat pack ... --overwrite`",
            )
        return torch.tensor(index)


@pytest.fixture(scope="module")
def registry():
    host = PluginHost(entry_points=False)
    host.registry.scoped("test-worker-errors").add(BadSampleData)
    return host.registry


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_workers_user_error_is_the_error_it_raised(registry, num_workers: int) -> None:
    cfg = {"dataset": {"type": "BadSampleData"}, "batch_size": 2, "num_workers": num_workers}
    loader = build_loader(cfg, registry, seed=0, train=False, path="val_loader")
    with pytest.raises(UserError) as info:
        list(loader)
    error = info.value
    assert type(error) is IncompletePack  # the type survives too
    assert error.message == "sample 5 of pack /data/train_lmdb has no key 'img'"
    assert error.where == "/data/train_lmdb" and error.hint == "re-pack it with `hat pack ... --overwrite`"
    assert "Traceback" not in str(error) and "worker process" not in str(error)


def test_an_error_raised_in_the_main_process_is_left_as_it_is() -> None:
    error = UserError("bad thing", where="here", hint="do that")
    assert from_worker(error) is error


def test_a_multi_line_message_and_a_missing_where_come_back_whole() -> None:
    original = UserError("first line\nsecond line", hint="do that")
    wrapped = UserError(
        "Caught UserError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n    raise UserError(...)\n'
        f"hat.errors.UserError: {original.render()}\n"
    )
    rebuilt = from_worker(wrapped)
    assert (rebuilt.message, rebuilt.where, rebuilt.hint) == ("first line\nsecond line", None, "do that")
