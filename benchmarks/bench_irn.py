"""IRN against bicubic down/up-scaling, and ILC's rate-distortion points, on held-out photographs.

Trains each IRN entry by its TrainSpec (as `zoo.load` would), then measures on the test patches of
scikit-image's chelsea and rocket (never seen in training): PSNR/SSIM of the HR image rebuilt from the
8-bit LR image and a sampled z (z ~ N(0, s^2 I), s the entry's gaussian_scale), PSNR from z = 0 (the
mode), the spread of PSNR over z samples, and the same for bicubic down then up-scaling (8-bit LR too).
Then trains ILC at a few rate weights (lambda) and reports (bpp, PSNR, PSNR from z = 0, SSIM).

    python benchmarks/bench_irn.py                              # irn_x2, irn_x4, ILC at 5 lambdas
    python benchmarks/bench_irn.py --irn irn_x2.zoo_skimage --lambdas   # only IRN x2
    python benchmarks/bench_irn.py --epochs 1 --out /tmp/irn.json --plot /tmp/rd.png
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from zoo.families.invertible.data import patches
from zoo.families.invertible.task import bicubic_round_trip, to_8bit
from zoo.models import get_entry
from zoo.native import train_base_model
from zoo.options import TrainOptions
from zoo.tasks import task_of

Z_SAMPLES = 3


def psnr_ssim(decoded: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    psnr = peak_signal_noise_ratio(to_8bit(decoded), x, data_range=1.0, dim=(1, 2, 3))
    return float(psnr), float(structural_similarity_index_measure(to_8bit(decoded), x, data_range=1.0))


def bench_irn(name: str, epochs: int | None, progress: bool) -> dict:
    entry = get_entry(name)
    start = time.perf_counter()
    model = train_base_model(entry, options=TrainOptions(epochs=epochs), progress=progress)
    train_s = time.perf_counter() - start
    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=64, shuffle=False)
    metrics = task.evaluate(model, batches, entry, progress=False).metrics
    x = patches("test", entry.input.patch)
    spread = []
    with torch.inference_mode():
        for seed in range(Z_SAMPLES):
            spread.append(psnr_ssim(model(x, generator=torch.Generator().manual_seed(100 + seed)).hr, x)[0])
    bicubic = psnr_ssim(bicubic_round_trip(x, model.scale), x)
    return {"name": name, "scale": model.scale, "gaussian_scale": model.gaussian_scale,
            "epochs": epochs or entry.train.epochs, "train_s": round(train_s, 1),
            "test_patches": len(x), "irn": metrics, "psnr_over_z_samples": spread,
            "bicubic": {"psnr": bicubic[0], "ssim": bicubic[1]}}


def bench_ilc(name: str, rate_lambda: float, epochs: int | None, progress: bool) -> dict:
    base = get_entry(name)
    entry = dataclasses.replace(base, model_kwargs={**base.model_kwargs, "rate_lambda": rate_lambda})
    start = time.perf_counter()
    model = train_base_model(entry, options=TrainOptions(epochs=epochs), progress=progress)
    train_s = time.perf_counter() - start
    task = task_of(entry)
    batches = task.batches(entry, entry.eval_data, batch_size=64, shuffle=False)
    return {"name": name, "rate_lambda": rate_lambda, "epochs": epochs or entry.train.epochs,
            "train_s": round(train_s, 1), **task.evaluate(model, batches, entry, progress=False).metrics}


def plot_rd(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["bpp"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p["bpp"] for p in points], [p["psnr"] for p in points], "o-", label="ILC (invertible encoder)")
    for p in points:
        ax.annotate(f"λ={p['rate_lambda']:g}", (p["bpp"], p["psnr"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=8)
    ax.set_xlabel("bits per pixel (entropy model)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("ILC rate-distortion, held-out scikit-image photographs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--irn", nargs="*", default=["irn_x2.zoo_skimage", "irn_x4.zoo_skimage"])
    parser.add_argument("--ilc", default="ilc.zoo_skimage")
    parser.add_argument("--lambdas", nargs="*", type=float, default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--epochs", type=int, default=None, help="override the entries' epochs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write ILC's rate-distortion plot here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"irn": [], "ilc": []}
    for name in args.irn:
        row = bench_irn(name, args.epochs, args.progress)
        results["irn"].append(row)
        print(f"{name}: IRN PSNR {row['irn']['psnr']:.2f} dB SSIM {row['irn']['ssim']:.4f} (z = 0: "
              f"{row['irn']['psnr_z0']:.2f} dB; LR vs bicubic "
              f"{row['irn']['psnr_lr']:.2f} dB; over z samples {min(row['psnr_over_z_samples']):.2f}-"
              f"{max(row['psnr_over_z_samples']):.2f}) | bicubic x{row['scale']} PSNR {row['bicubic']['psnr']:.2f} dB "
              f"SSIM {row['bicubic']['ssim']:.4f} | {row['test_patches']} test patches, trained {row['train_s']} s",
              flush=True)
    for rate_lambda in args.lambdas:
        row = bench_ilc(args.ilc, rate_lambda, args.epochs, args.progress)
        results["ilc"].append(row)
        print(f"{args.ilc} lambda={rate_lambda:g}: {row['bpp']:.3f} bpp, PSNR {row['psnr']:.2f} dB "
              f"(z = 0: {row['psnr_z0']:.2f} dB), SSIM {row['ssim']:.4f}, trained {row['train_s']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot and results["ilc"]:
        plot_rd(results["ilc"], args.plot)


if __name__ == "__main__":
    main()
