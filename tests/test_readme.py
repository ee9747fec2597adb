"""The README's Python block runs as written, and its model table quotes the registry's figures."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no python block"
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "nuclei;" in result.stdout and "aji" in result.stdout


def test_readme_model_table_quotes_the_registry():
    """One source for the figures: every number in a zoo model's row of the README table is one of that model's
    registry metrics as `cellzoo zoo list` prints them (3 decimals)."""
    registry = {m["name"]: m for m in json.loads((REPO / "src/cellzoo/zoo/registry.json").read_text())["models"]}
    checked = 0
    for line in README.splitlines():
        if not line.startswith("| `"):
            continue
        names = [n for n in re.findall(r"`([^`]+)`", line.split("|")[1]) if n in registry]
        if not names:
            continue
        figures = line.split("|")[6]
        allowed = {f"{v:.3f}" for n in names for v in registry[n]["metrics"].values() if isinstance(v, float)}
        quoted = re.findall(r"\b\d\.\d{3}\b", figures)
        for number in quoted:
            assert number in allowed, f"{names}: README quotes {number}, the registry has {sorted(allowed)}"
        checked += len(quoted)
        if any(registry[n]["metrics"] for n in names):
            assert quoted, f"{names}: the registry has metrics but the README row quotes none"
    assert checked >= 20
