"""The repository keeps its promises: the README's commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, f"README has no {marker} block"
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"the {marker} must be exactly one command, got {lines}"
    return lines[0].strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _command_after("test-command")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f".ci/run must run the README's test command {command!r}"


def test_readme_main_command_installs_and_runs_the_demo() -> None:
    command = _command_after("main-command")
    assert "constraints.txt" in command and command.endswith("hat demo")
    for package in re.findall(r"-e (\S+)", command):
        assert (ROOT / package / "pyproject.toml").is_file(), f"{package} is not an installable package"


def test_constraints_pin_the_cpu_torch_and_numpy_1() -> None:
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M)
    assert re.search(r"^numpy.*<2", pins, re.M)
    assert "opencv-python-headless" in pins and not re.search(r"^opencv-python==", pins, re.M)


def test_task_configs_inherit_the_stages_instead_of_repeating_them() -> None:
    """The stage sections are written once, in core's hat_stages; a task sets values."""
    import yaml

    stage_keys = {"float_trainer", "calibration_trainer", "qat_trainer", "compile"}
    stage_keys |= {f"{s}_predictor" for s in ("float", "calibration", "qat", "int_infer")}
    files = sorted(ROOT.glob("plugins/*/src/*/configs/*.yaml"))
    assert files
    for path in files:
        data = yaml.safe_load(path.read_text())
        repeated = {k for k in stage_keys - {"compile"} if k in data}
        assert not repeated, f"{path.relative_to(ROOT)} repeats {sorted(repeated)}: set top-level values instead"
        bases = data.get("_base_")
        assert bases, f"{path.relative_to(ROOT)} has no _base_ (hat_stages or a config built on it)"


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    """Shared helpers live in helper modules and hat.testing; fixtures come through conftests."""
    import ast

    offending = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                last = node.module.rsplit(".", 1)[-1]
                if node.module.startswith("tests") and (last.startswith("test_") or last == "conftest"):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not offending, "\n".join(offending)
