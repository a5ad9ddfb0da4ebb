"""hat-ganet's tests; the plugin's source is put on the path until it is installed."""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "plugins" / "hat-ganet" / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
