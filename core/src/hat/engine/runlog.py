"""``<work-dir>/logs/<stage>.jsonl``: one JSON object per logged step or validation.

Machine-readable history that outlives the progress bar; written by rank 0 only and
appended to, so a resumed run continues the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hat import distributed


class RunLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n")
