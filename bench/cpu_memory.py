"""Training memory on CPU, measured vs the run plan's estimate: LoRA and QLoRA on SmolLM2-135M-Instruct with
full-length batches (every row is cut at data.max_length, so a micro-batch is exactly batch × length tokens,
the case the estimate describes).

Each run is its own subprocess, trains through `chattune.train.trainer.train` for 2 steps, and samples its RSS
every few milliseconds; "measured" is the peak during training above the RSS after imports (the estimate
leaves out the Python runtime), "load" the RSS when training starts (model loaded), both against the plan's
memory estimate read back from the run's plan.json.

    .venv/bin/python bench/cpu_memory.py                     # qlora and lora at 4 x 256 and 2 x 128
    .venv/bin/python bench/cpu_memory.py --shapes 8x512      # other batch x length
    .venv/bin/python bench/cpu_memory.py --smoke             # tiny random model, seconds

Numbers go in reports and docs, never in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _smoke

MB = 2 ** 20
WORDS = "the quick brown fox jumps over the lazy dog while seven bright stars watch a silent river".split()


def worker(method: str, batch: int, length: int, model: str) -> dict:
    import psutil
    import torch
    from transformers import TrainerCallback

    from chattune.config import config_from_dict
    from chattune.train.trainer import train

    torch.set_num_threads(1)
    proc = psutil.Process()
    peaks = {"load": 0, "train": 0}
    state = {"phase": "load", "begin": 0}

    def sample():
        while state["phase"] != "done":
            peaks[state["phase"]] = max(peaks[state["phase"]], proc.memory_info().rss)
            time.sleep(0.002)

    class Mark(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            state["begin"], state["phase"] = proc.memory_info().rss, "train"

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [{"prompt": f"Write text {i}.", "completion": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 * length))}
                for i in range(2 * batch)]
        (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        cfg = config_from_dict({"model": {"name_or_path": model}, "method": {"type": method},
                                "data": {"train": str(tmp / "d.jsonl"), "max_length": length, "cache_dir": str(tmp / "c")},
                                "train": {"max_steps": 2, "batch_size": batch, "report_to": ["none"], "save_steps": 1000},
                                "output_dir": str(tmp / "run")})
        base = proc.memory_info().rss
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        train(cfg, callbacks=[Mark()])
        state["phase"] = "done"
        thread.join()
        est = json.loads((tmp / "run" / "plan.json").read_text(encoding="utf-8"))["memory"]
    return {"method": method, "batch": batch, "length": length, "after_imports_mb": base // MB,
            "load_mb": (state["begin"] - base) // MB, "measured_mb": (peaks["train"] - base) // MB,
            "estimate_mb": est["total"] // MB, "estimate_weights_mb": est["weights"] // MB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["4x256", "2x128"], help="batch x length per run")
    ap.add_argument("--methods", nargs="+", default=["qlora", "lora"], choices=["qlora", "lora"])
    ap.add_argument("--smoke", action="store_true", help="tiny random model, one small shape (numbers mean nothing)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = str(_smoke.tiny_model_dir()) if a.smoke else "smollm2-135m-instruct"
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]), model)), flush=True)
        return
    shapes = ["2x32"] if a.smoke else a.shapes
    print(f"{'method':7} {'batch x len':>11} {'load MB':>8} {'measured MB':>11} {'estimate MB':>11} {'off':>6}")
    for shape in shapes:
        b, n = shape.lower().split("x")
        for method in a.methods:
            p = subprocess.run([sys.executable, __file__, "--worker", method, b, n, *(["--smoke"] if a.smoke else [])],
                               capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode or line is None:
                raise SystemExit(f"{method} {shape} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
            r = json.loads(line[7:])
            off = (r["measured_mb"] - r["estimate_mb"]) / max(r["estimate_mb"], 1)
            print(f"{method:7} {shape:>11} {r['load_mb']:8d} {r['measured_mb']:11d} {r['estimate_mb']:11d} {off:+6.0%}",
                  flush=True)
    print(f"(RSS above the process after imports; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
