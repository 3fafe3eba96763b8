"""scripts/gpu_check.sh (the one GPU proof) runs end to end on CPU: the same script, bench and `chattune.train`
route on a tiny Qwen3, and writes the table (the GPU itself is not available in CI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_runs_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--steps", "2",
                          "--examples", "40", "--variants", "hf-pad,padded,packed,liger,qlora"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = {}
    for line in (tmp_path / "gpu_check.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[0] == "tiny":
            rows[cells[1]] = cells
    assert set(rows) == {"hf-pad", "padded", "packed", "liger", "qlora"}, rows
    assert "skipped" in rows["liger"][-1] and "no CUDA GPU" in rows["liger"][-1]  # the plan refuses, says why
    for v in ("hf-pad", "padded", "packed", "qlora"):
        model, variant, attn, recompute, tps, mfu, peak, plan_gib, ratio, loss = rows[v]
        assert float(tps) > 0 and float(mfu.rstrip("%")) > 0 and 10 < float(loss) < 13, rows[v]  # ln(151936) ≈ 11.9
        assert attn == "sdpa" and recompute == ("on" if v == "hf-pad" else "off")
        assert (plan_gib == "-") == (v == "hf-pad")  # chattune's rows carry the plan's memory estimate
    assert rows["hf-pad"][8] == "1.00x" and rows["packed"][8].endswith("x")
