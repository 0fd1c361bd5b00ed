"""bench/gpu_check.sh on its CPU path (tiny checkpoint, batch sizes 1 and 2): every stage writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from diff3m.bench.gpu import peak_for

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script_cpu_path(tiny_checkpoint, tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "SIZES": "1,2", "QUICK": "1", "OUT": str(tmp_path),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run(["bash", "bench/gpu_check.sh", str(tiny_checkpoint)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    inf = json.loads((tmp_path / "inference.json").read_text())
    assert inf["reference_steps"] == 399 and inf["speedup"] > 0
    sweep = json.loads((tmp_path / "sweep_eager.json").read_text())
    assert [p["batch_size"] for p in sweep["points"]] == [1, 2]
    for p in sweep["points"]:
        assert p["flops_per_pass"] > 0 and p["studies_per_second"] > 0 and p["unet_passes"] == 8
        assert p["peak_fraction"] is None  # no bf16 peak is known for a CPU
    assert "best" in proc.stdout and "studies/s" in proc.stdout


def test_peak_lookup():
    assert peak_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_for("NVIDIA H100 PCIe") == 756.0
    assert peak_for("NVIDIA H200") == 989.0
    assert peak_for("Some CPU") is None
