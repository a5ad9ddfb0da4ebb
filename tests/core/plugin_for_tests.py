"""A small task plugin defined in the tests, registered in-process.

It exercises every hook with real code paths (a packer over a text format, a
generator, configs with a base) without depending on any installed plugin.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hat.data.packer import Packer
from hat.errors import BadSourceRecord, UserError
from hat.hookspecs import TaskSpec, hookimpl
from hat.registry import register_type

CONFIG_DIR = Path(__file__).parent / "configs"
DIST = "hat-toy-tests"


@register_type("ToyThing")
class ToyThing:
    def __init__(self, size: int = 1, inner: object = None):
        self.size = size
        self.inner = inner


class ToyPacker(Packer):
    """Packs ``<src>/<split>/*.txt`` files whose lines are ``a,b`` integer pairs."""

    dataset = "toyset"

    def __init__(self, src: Path, split: str, *, scale: int = 1) -> None:
        super().__init__(src, split)
        self.scale = scale

    def records(self) -> list[Path]:
        folder = Path(self.src) / self.split
        if not folder.is_dir():
            raise UserError(f"no split folder {folder}", hint="expected <src>/<split>/*.txt")
        return sorted(folder.glob("*.txt"))

    def pack_record(self, record: Path) -> Iterable[dict]:
        for line_no, line in enumerate(record.read_text().splitlines(), start=1):
            parts = line.split(",")
            if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise BadSourceRecord(f"expected 'a,b' integers, got {line!r}", file=str(record), line=line_no)
            yield {"values": np.array([int(p) for p in parts], dtype=np.int64) * self.scale, "name": record.name}


def toy_synth(dst: Path, *, seed: int, num_files: int = 3) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        folder = Path(dst) / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(num_files):
            rows = rng.integers(-50, 50, size=(4, 2))
            (folder / f"{i:03d}.txt").write_text("".join(f"{a},{b}\n" for a, b in rows))


class ToyPlugin:
    """Hook implementations as methods, like a plugin module's functions."""

    __name__ = "toy"

    @hookimpl
    def hat_register(self, registry) -> None:
        registry.add(ToyThing)

    @hookimpl
    def hat_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="toy", summary="a test task", default_config="toy-tiny", dataset="toyset")]

    @hookimpl
    def hat_configs(self) -> dict[str, Path]:
        return {p.stem: p for p in CONFIG_DIR.glob("*.yaml")}

    @hookimpl
    def hat_packers(self) -> dict[str, type]:
        return {"toyset": ToyPacker}

    @hookimpl
    def hat_synth(self) -> dict[str, object]:
        return {"toyset": toy_synth}
