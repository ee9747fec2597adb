"""Benchmark: start-up cost of the CLI and of the plugin inside napari (issue 19, item 4).

- ``cellzoo --help`` and ``cellzoo zoo list``: wall time of the console script in fresh processes (target
  ≤ 0.5 s; neither may import torch).
- napari: a fresh process that imports napari, opens a Viewer (window shown, under Xvfb) and runs the event
  loop once, with the plugin enabled vs disabled (npe2 ``disable`` before the viewer exists, in a throw-away
  napari settings folder so the user's settings are never touched); rounds interleaved A B A B, the median of
  the per-round differences reported (target ≤ 0.2 s). Each run also reports which ``cellzoo`` modules and
  whether torch were imported by the time the window was up.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/startup.py [--rounds 7]

Writes ``benchmarks/results/startup.md`` and prints the table. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLUGIN = "napari-cellzoo"

NAPARI_CHILD = r"""
import json, sys, time
started = time.perf_counter()
enabled = sys.argv[1] == "on"
from npe2 import PluginManager
manager = PluginManager.instance()
manager.discover()
if not enabled:
    manager.disable(%(plugin)r)
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
QApplication.processEvents()
seconds = time.perf_counter() - started
modules = sorted(name for name in sys.modules if name.startswith("cellzoo"))
print(json.dumps({"seconds": seconds, "cellzoo_modules": modules, "torch": "torch" in sys.modules,
                  "plugin_listed": %(plugin)r in [m.name for m in manager.iter_manifests(disabled=False)]}))
viewer.close()
""" % {"plugin": PLUGIN}


def console_script() -> str:
    """The installed ``cellzoo`` entry point next to this interpreter."""
    candidate = Path(sys.executable).with_name("cellzoo")
    if not candidate.exists():
        raise SystemExit(f"no cellzoo console script next to {sys.executable}: pip install -e . first")
    return str(candidate)


def time_command(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr[-600:]}")
    return seconds, proc.stdout


def cli_torch_free(script: str, args: list[str]) -> bool:
    """Run the CLI's main in-process in a child and report whether torch got imported."""
    code = ("import sys, runpy; sys.argv = %r; "
            "import cellzoo.cli as c\ntry:\n    c.main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')") % ([script, *args], args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    return proc.stdout.strip().endswith("NO-TORCH")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    script = console_script()
    rows = []
    for label, cli_args in (("cellzoo --help", ["--help"]), ("cellzoo zoo list", ["zoo", "list"])):
        time_command([script, *cli_args])  # warm the file cache once (not counted)
        times = [time_command([script, *cli_args])[0] for _ in range(args.rounds)]
        rows.append({"what": label, "median_s": statistics.median(times), "runs": times,
                     "torch_free": cli_torch_free(script, cli_args), "target_s": 0.5})

    settings = Path(tempfile.mkdtemp(prefix="cellzoo-napari-settings-"))
    env = {**os.environ, "NAPARI_CONFIG": str(settings / "settings.yaml")}
    child = [sys.executable, "-c", NAPARI_CHILD]
    time_command([*child, "on"], env)  # warm-up: caches, fonts, shader compilation (not counted)
    on, off, details = [], [], {}
    for _ in range(args.rounds):
        for state, bucket in (("on", on), ("off", off)):
            _wall, out = time_command([*child, state], env)
            result = json.loads(out.strip().splitlines()[-1])
            bucket.append(result["seconds"])
            details[state] = result
    differences = [a - b for a, b in zip(on, off)]
    rows.append({"what": "napari Viewer up, plugin enabled", "median_s": statistics.median(on), "runs": on,
                 "cellzoo_modules": details["on"]["cellzoo_modules"], "torch": details["on"]["torch"],
                 "plugin_listed": details["on"]["plugin_listed"]})
    rows.append({"what": "napari Viewer up, plugin disabled", "median_s": statistics.median(off), "runs": off,
                 "plugin_listed": details["off"]["plugin_listed"]})
    rows.append({"what": "difference (enabled − disabled), median of rounds", "median_s": statistics.median(differences),
                 "runs": differences, "target_s": 0.2})

    import torch  # only for the machine line

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Start-up: the CLI and the plugin inside napari", "",
             f"Written by `benchmarks/startup.py` on {when}. CPU: {cpu_model()} ({os.cpu_count()} cores); native bf16: "
             f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}. Fresh processes, {args.rounds} runs each "
             "(napari rounds interleaved enabled/disabled, after one warm-up run).", "",
             "| what | median (s) | runs (s) | target | note |", "|---|---:|---|---|---|"]
    for row in rows:
        target = row.get("target_s")
        verdict = "" if target is None else f"≤ {target:g} s: {'met' if row['median_s'] <= target else 'NOT met'}"
        note = []
        if "torch_free" in row:
            note.append("torch not imported" if row["torch_free"] else "IMPORTS TORCH")
        if "cellzoo_modules" in row:
            note.append(f"cellzoo modules imported at start-up: {', '.join(row['cellzoo_modules']) or 'none'}; "
                        f"torch {'imported' if row['torch'] else 'not imported'}")
        if "plugin_listed" in row:
            note.append(f"plugin {'active' if row['plugin_listed'] else 'disabled'}")
        lines.append(f"| {row['what']} | {row['median_s']:.3f} | {' '.join(f'{t:.2f}' for t in row['runs'])} | "
                     f"{verdict} | {'; '.join(note)} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    from cellzoo._atomic import atomic_write_text  # noqa: E402 (after the measurements: not timed)

    atomic_write_text(RESULTS / "startup.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
