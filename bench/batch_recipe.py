"""Does the batch the planner picks train as well as a small batch? (issue 16, item 1)

    python bench/batch_recipe.py --json bench/results/batch_recipe_cpu.json            # ~20 min
    python bench/batch_recipe.py --table-from bench/results/batch_recipe_cpu.json      # table again

Three ``autotune train --auto`` runs of the ``cpu-small`` preset (32 px) on Imagenette
(``../shared/data/imagenette/train``, the preset's seeded 10% held-out split), the same
epochs for all:

* ``planner``: 8 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``),
  ``--batch auto``: the planner takes the smallest of the largest per-device batch that
  fits, the throughput knee and the critical batch from the gradient noise scale it
  measures on the data after packing;
* ``small``: one device, ``--batch 128`` (global 128: the reference);
* ``forced``: 8 fake devices, ``--batch 128`` (global 1,024), which reuses the
  ``planner`` run's probe (same noise scale): the plan's warning and the rule used;
* ``critical`` (only with ``--only critical --append``): 8 fake devices at the
  ``planner`` plan's critical per-device batch (``batch_critical``), the same probe.

Each run is a child process with its own results folder; the script reads each run's
``plan.json``, ``probe.json``, ``summary.json`` and ``metrics.jsonl`` back and keeps,
per arm: the command, the batch decisions with their reasons, the warnings, the noise
scale (probe and end of training), the learning rate, held-out top-1 per epoch, the
final top-1/top-5, images/s and wall times. ``--json`` writes all of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenette" / "train"
XLA8 = "--xla_force_host_platform_device_count=8"


def arms(epochs: float, data: Path, work: Path) -> list[dict]:
    """The three runs: name, environment XLA_FLAGS, ``--batch`` and results folder."""
    return [
        {"name": "planner", "xla_flags": XLA8, "batch": "auto", "results": work / "dev8"},
        {"name": "small", "xla_flags": "", "batch": "128", "results": work / "dev1"},
        {"name": "forced", "xla_flags": XLA8, "batch": "128", "results": work / "dev8"},
        {"name": "critical", "xla_flags": XLA8, "batch": "from-plan", "results": work / "dev8"},
    ]


def command(arm: dict, epochs: float, data: Path) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", "train", "--auto", "--data", str(data),
            "--preset", "cpu-small", "--epochs", f"{epochs:g}", "--batch", arm["batch"],
            "--results", str(arm["results"]), "--new-run"]


def newest_run(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if (p / "summary.json").is_file())
    if not runs:
        raise SystemExit(f"no finished run under {root}")
    return runs[-1]


def read_run(run: Path) -> dict:
    """The figures of one run folder (plan, probe, summary, evaluations)."""
    plan = json.loads((run / "plan.json").read_text())
    probe = json.loads((run / "probe.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    evals, noise = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "EvalReport":
            evals.append({"epoch": r["epoch"], "top1": r["top1"], "top5": r["top5"]})
        elif r.get("kind") == "StepReport":
            noise.append({"step": r["step"], "noise_scale": r["noise_scale"]})
    decisions = {d["name"]: {"value": d["value"], "reason": d["reason"]}
                 for d in plan["decisions"]
                 if d["name"] in ("batch_fit", "batch_knee", "batch_critical", "per_device_batch",
                                  "global_batch", "learning_rate")}
    final = summary.get("final_eval") or {}
    return {
        "run": run.name, "per_device_batch": plan["per_device_batch"],
        "global_batch": plan["global_batch"], "devices": plan["local_devices"],
        "learning_rate": plan["lr"]["learning_rate"], "lr_rule": plan["lr"]["rule"],
        "warnings": plan.get("warnings", []), "decisions": decisions,
        "plan_noise_scale": plan.get("noise_scale"), "critical_batch": plan.get("critical_batch"),
        "noise_probe": probe.get("noise_scale"),
        "rate_curve": [{"per_device_batch": p["per_device_batch"],
                        "images_per_s": p["images_per_s"]}
                       for p in probe["accelerator"].get("rate_curve", [])],
        "evals": evals, "noise_during_run": noise,
        "top1": final.get("top1"), "top5": final.get("top5"),
        "steps": summary["steps"], "epochs": summary["epochs"],
        "images_per_s": summary["images_per_s"], "train_wall_s": summary["wall_s"],
        "noise_scale_end": summary.get("noise_scale"),
    }


def run_arm(arm: dict, epochs: float, data: Path) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if arm["xla_flags"]:
        env["XLA_FLAGS"] = arm["xla_flags"]
    env["PYTHONPATH"] = str(ROOT)
    arm["results"].mkdir(parents=True, exist_ok=True)
    cmd = command(arm, epochs, data)
    print(f"== {arm['name']}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{arm['name']}: exit code {proc.returncode}")
    out = read_run(newest_run(arm["results"]))
    out.update(name=arm["name"], command=("XLA_FLAGS=" + arm["xla_flags"] + " "
                                          if arm["xla_flags"] else "")
               + "autotune " + " ".join(cmd[3:]), command_wall_s=wall)
    return out


def table(doc: dict) -> str:
    rows = ["| arm | devices | per-device x devices = global | LR (rule) | noise scale B_simple "
            "(probe -> end of run) | held-out top-1 (top-5) | train images/s | command wall |",
            "|---|---|---|---|---|---|---|---|"]
    def num(x):
        return "-" if x is None or x != x else f"{x:,.0f}"

    for a in doc["arms"]:
        probe = (a["noise_probe"] or {}).get("b_simple")
        rows.append(
            f"| {a['name']} | {a['devices']} | {a['per_device_batch']} x {a['devices']} = "
            f"{a['global_batch']:,} | {a['learning_rate']:.4g} ({a['lr_rule']}) | "
            f"{num(probe)} -> {num(a['noise_scale_end'])} | "
            f"{a['top1']:.2%} ({a['top5']:.2%}) | {a['images_per_s']:,.0f} | "
            f"{a['command_wall_s'] / 60:.1f} min |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--work", default="/tmp/autotune-batch-recipe")
    ap.add_argument("--json")
    ap.add_argument("--table-from")
    ap.add_argument("--only", help="comma-separated arm names (default: planner, small, "
                                   "forced)")
    ap.add_argument("--append", action="store_true", help="add the arms to --json's file")
    args = ap.parse_args()
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())))
        return 0
    doc = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "epochs": args.epochs,
           "data": args.data, "arms": []}
    only = set(args.only.split(",")) if args.only else {"planner", "small", "forced"}
    if args.append:
        doc = json.loads(Path(args.json).read_text())
    for arm in arms(args.epochs, Path(args.data), Path(args.work)):
        if arm["name"] not in only:
            continue
        if arm["batch"] == "from-plan":
            planned = next(a for a in doc["arms"] if a["name"] == "planner")
            arm["batch"] = planned["decisions"]["batch_critical"]["value"]
        doc["arms"].append(run_arm(arm, args.epochs, Path(args.data)))
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
        print(table(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
