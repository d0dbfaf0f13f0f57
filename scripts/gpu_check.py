"""`make gpu-check`: the checks that need a GPU, in one short run; prints a table and
writes it to results/gpu/check.csv. Exits 1 if a check fails.

1. split: every batch-statistics norm's layers on real Fashion-MNIST activations,
   grouped and one group per worker, float32 on the GPU, against float64
   (``brn_repro.numerics.split_errors``; the tests check the same on the CPU).
2. precision: the small CNN's whole gradient on one real batch, float32 on the GPU
   against float64, with cuDNN's TF32 convolutions on (torch's default) and off.
3. runner: ``train.device=cuda`` end to end for bn and brn: in float64 equal to the
   CPU's run; in float32 and tf32, test accuracy and images/s beside the CPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from brn_repro.config import norm_factory  # noqa: E402
from brn_repro.data import TrainingData  # noqa: E402
from brn_repro.files import write_csv  # noqa: E402
from brn_repro.models import build_model  # noqa: E402
from brn_repro.numerics import CHECK_OVERRIDES, layer_cases, split_errors  # noqa: E402
from brn_repro.schema import RunConfig  # noqa: E402
from brn_repro.train import run  # noqa: E402


def compose_config(data: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset.root={data}", "dataset.download=false",
                                           "logger=none", "train.progress=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def model_for(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=10, in_channels=1, image_size=28,
                       norm_layer=norm_factory(RunConfig.parse(config)), width=config["model"]["width"])


def split_rows(data: Path, device: torch.device) -> list[dict]:
    rows = []
    for norm, options in CHECK_OVERRIDES.items():
        config = compose_config(data, f"norm={norm}", *options, "data.per_worker_batch=8", "data.workers=2")
        loader = TrainingData(RunConfig.parse(config))
        batch, warm = loader.train_batch(), loader.train_batch()
        worst: dict[str, float] = {}
        for layer, x, upstream in layer_cases(model_for(config), batch, warm=warm):
            for entry, error in split_errors(layer, x, upstream, 2, device).items():
                worst[entry] = max(worst.get(entry, 0.0), error)
        groups = {"float64 split": ({"float64 split"}, 1e-10),
                  "float32 grads": ({k for k in worst if "grad" in k}, 2e-5),
                  "float32 outputs, statistics": ({k for k in worst if "grad" not in k
                                                   and not k.startswith("float64")}, 2e-6)}
        for name, (keys, limit) in groups.items():
            entry = max(keys, key=worst.get)
            rows.append({"check": "split", "case": f"{norm} {name}: worst {entry}",
                         "value": f"{worst[entry]:.2e}", "limit": f"{limit:.0e}", "ok": worst[entry] < limit})
    return rows


def precision_rows(data: Path, device: torch.device) -> list[dict]:
    config = compose_config(data, "norm=brn", *CHECK_OVERRIDES["brn"], "data.per_worker_batch=8", "data.workers=2")
    x, y = TrainingData(RunConfig.parse(config)).train_batch()

    def gradient(dtype, where):
        model = model_for(config).to(where, dtype).train()
        F.cross_entropy(model(x.to(where, dtype)), y.to(where)).backward()
        return torch.cat([p.grad.double().cpu().flatten() for p in model.parameters()])

    reference = gradient(torch.float64, torch.device("cpu"))
    rows = []
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32  # what train.precision=tf32 / float32 set
        error = ((gradient(torch.float32, device) - reference).norm() / reference.norm()).item()
        rows.append({"check": "precision", "case": f"whole gradient, cudnn.allow_tf32={tf32}",
                     "value": f"{error:.2e}", "limit": "", "ok": True})
    return rows


def final_loss(summary: dict) -> float:
    return json.loads((Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])["loss"]


def runner_rows(data: Path, steps: int, device: torch.device) -> list[dict]:
    """bn and brn at per-worker 4 x 8 workers with the quick profile's schedule. In
    float64 the device and the CPU must end equal (float32 runs of one config drift
    apart by rounding alone: ReLU flips, brn by several points at 300 steps, so they
    are reported, not compared); float32 and tf32 give accuracy and images/s."""
    variants = [(device.type, "float64", steps // 3), ("cpu", "float64", steps // 3),
                (device.type, "float32", steps), ("cpu", "float32", steps)]
    if device.type == "cuda":
        variants.insert(3, ("cuda", "tf32", steps))
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for norm in ("bn", "brn"):
            loss = {}
            for where, precision, length in variants:
                config = compose_config(data, f"norm={norm}", "data.per_worker_batch=4", "data.workers=8",
                                        f"train.steps={length}", f"train.eval_every={length}",
                                        f"train.checkpoint_every={length}", "recipe.norm_momentum=0.06",
                                        "recipe.schedule.relax_start=50", "recipe.schedule.r_max_end_step=200",
                                        "recipe.schedule.d_max_end_step=135", f"train.device={where}",
                                        f"train.precision={precision}", f"paths.runs={runs}/{where}")
                started = time.perf_counter()
                summary = run(config)
                loss[(where, precision)] = final_loss(summary)
                case = f"{norm} pwb4x8 {length} steps, {where} {precision}"
                rows.append({"check": "runner", "case": f"{case}: test_acc (loss)",
                             "value": f"{summary['test_acc']} ({loss[(where, precision)]:.6f})", "limit": "",
                             "ok": summary["status"] == "completed" and summary["device"] == where})
                rows.append({"check": "runner", "case": f"{case}: images/s (wall s)",
                             "value": f"{summary['images_per_second']} ({time.perf_counter() - started:.1f})",
                             "limit": "", "ok": True})
            gap = abs(loss[(device.type, "float64")] / loss[("cpu", "float64")] - 1)
            rows.append({"check": "runner", "case": f"{norm}: float64 loss, {device.type} vs cpu (relative)",
                         "value": f"{gap:.1e}", "limit": "1e-06", "ok": gap <= 1e-6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    parser.add_argument("--out", default="results/gpu", help="folder for check.csv")
    parser.add_argument("--steps", type=int, default=300, help="steps of each runner check")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: gpu-check needs a CUDA device; torch sees none (--device cpu tries the script)")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name} torch {torch.__version__}", flush=True)
    rows = [{"check": "device", "case": name, "value": torch.__version__, "limit": "", "ok": True}]
    for part in (lambda: split_rows(Path(args.data), device), lambda: precision_rows(Path(args.data), device),
                 lambda: runner_rows(Path(args.data), args.steps, device)):
        for row in part():
            rows.append(row)
            print(f"{row['check']:9s} {row['case']:60s} {row['value']!s:>18s} "
                  f"{row['limit']:>6s} {'ok' if row['ok'] else 'FAILED'}", flush=True)
    out = Path(args.out)
    write_csv(out / "check.csv", rows)
    print(f"wrote {out / 'check.csv'}")
    sys.exit(0 if all(row["ok"] for row in rows) else 1)


if __name__ == "__main__":
    main()
