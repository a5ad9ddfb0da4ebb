"""Batching samples whose annotations vary in size (boxes per image, lanes, tracks).

torch's ``default_collate`` stacks every key and fails on a key whose arrays differ in
length from sample to sample. Detection batches keep such keys as per-sample lists —
the layout targets and losses iterate over — and stack everything else as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from hat.registry import register_type


@register_type("ListCollate")
class ListCollate:
    """``collate_fn`` that keeps ``list_keys`` as lists (numpy arrays become tensors) and
    stacks the rest with ``default_collate``; keys in ``keep_keys`` stay lists untouched
    (strings, transforms needed only by the metric).
    """

    def __init__(self, list_keys: Sequence[str] = (), keep_keys: Sequence[str] = ()) -> None:
        self.list_keys = tuple(list_keys)
        self.keep_keys = tuple(keep_keys)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("ListCollate got an empty batch")
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [sample[key] for sample in samples]
            if key in self.list_keys:
                batch[key] = [torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in values]
            elif key in self.keep_keys:
                batch[key] = values
            else:
                batch[key] = default_collate(values)
        return batch

    def __repr__(self) -> str:
        return f"ListCollate(list_keys={list(self.list_keys)}, keep_keys={list(self.keep_keys)})"
