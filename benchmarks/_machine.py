"""What a benchmark reports about the machine it ran on."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(folder: Path, stem: str, rows, text: str) -> None:
    """``<stem>.json`` (the rows) and ``<stem>.md`` (the report) in ``folder``, atomically; prints the report."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from cellzoo._atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.json", json.dumps(rows, indent=1))
    atomic_write_text(folder / f"{stem}.md", text)
    print(text)
