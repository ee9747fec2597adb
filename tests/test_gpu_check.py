"""benchmarks/gpu_check.py on a machine without CUDA: it runs its CPU reference part, says that it skipped
every CUDA section and writes no report (so a CPU run never overwrites GPU results)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_skips_the_cuda_parts(tmp_path):
    out = tmp_path / "results" / "gpu.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CELLZOO_MODELS": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    for section in ("CUDA inference", "CUDA = CPU check", "OOM fallback on CUDA", "fine-tune on CUDA"):
        assert f"- {section}" in text and "skipped (no CUDA device available to PyTorch)" in text
    assert "CUDA parts skipped" in text and "no report written" in text
    assert not out.exists() and not out.parent.exists()
    # the CPU reference ran every embedded model on real pixels and found the sample's nuclei
    from cellzoo.zoo import list_models

    embedded = [m.name for m in list_models() if m.status == "embedded"]
    assert embedded
    for name in embedded:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        objects, aji_value = int(cells[4]), float(cells[5])
        assert objects >= 15 and aji_value >= 0.6, row  # 256² crop of the DSB sample: ~30 nuclei
    assert "OOM fallback (injected once, cpu" in text and "— ok" in text


def test_agreement_pairs_objects_at_iou_09():
    gpu_check = _gpu_check_module()
    labels = np.zeros((64, 64), np.int32)
    for k, (y, x) in enumerate([(4, 4), (4, 30), (30, 4), (30, 30)], start=1):
        labels[y:y + 20, x:x + 20] = k
    assert gpu_check.agreement(labels, labels) == (1.0, 4, 4, 4)
    moved = labels.copy()
    moved[moved == 4] = 0
    moved[32:52, 32:52] = 4  # IoU (18×18)/(2·400 − 324) = 0.68: no longer the same instance
    share, pairs, n_ref, n_other = gpu_check.agreement(labels, moved)
    assert (pairs, n_ref, n_other) == (3, 4, 4) and share == 0.75
    assert gpu_check.agreement(np.zeros_like(labels), np.zeros_like(labels))[0] == 1.0


def test_mosaic_and_synthetic_he_are_real_images():
    gpu_check = _gpu_check_module()
    images = gpu_check.sample_images()
    gray, labels = images["fluo"]
    he, _ = images["he"]
    assert he.shape == gray.shape + (3,) and he.dtype == np.uint8
    nuclei, background = he[labels > 0].mean(0), he[labels == 0].mean(0)
    assert nuclei[1] < background[1] - 60  # nuclei darker (purple) than the eosin background
    big = gpu_check.mosaic(gray, 1024)
    assert big.shape == (1024, 1024) and np.array_equal(big[:520, :696], gray)
    assert np.array_equal(big[520:530, :696], gray[::-1][:10])  # mirrored: no seam
    assert np.array_equal(big[:520, 696:706], gray[:, ::-1][:, :10])
