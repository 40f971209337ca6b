"""scripts/gpu_check.py runs on GPU machines only now and then; its CPU smoke mode keeps it from
rotting: the same code paths (parity, ORT, timing table, report files) on tiny shapes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["spec"] for c in report["cases"]] == ["resnet", "transformer"]
    for case in report["cases"]:
        assert case["fp32_rel_err"] == 0.0  # same device, same weights
        assert case["bf16_rel_err"] <= 1e-2 and case["ort_rel_err"] <= 1e-4
    assert {row["batch"] for row in report["timings"]} == {1, 2}
    assert "TensorRT" in (tmp_path / "gpu_check.md").read_text()
