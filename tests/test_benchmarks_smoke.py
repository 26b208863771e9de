"""The benchmark harness in quick mode (tiny models): every benchmark script still runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["hook_overhead", "collect", "funcnet_masking", "steering", "prune"]


@pytest.mark.slow
def test_benchmarks_quick_mode_runs(tmp_path):
    env = {**os.environ, "TLFN_BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--no-write",
                           "--only", *QUICK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for name in ("hook_overhead_quick", "collect_quick", "funcnet_masking_quick"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data and "machine" in json.dumps(data)
