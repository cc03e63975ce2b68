"""Time to quality of the public scripts ganbench is compared with: eriklindernoren/PyTorch-GAN's
implementations/<name>/<name>.py (MIT licence; fetch it, it is not part of this project), measured
as `bench perf --time-to-quality` measures ganbench's variants, on the same machine.

    python scripts/public_time_to_quality.py PYTORCH_GAN_CHECKOUT [--scripts wgan,wgan_gp] \
        [--threshold 300] [--max-seconds 300] [--set wgan_gp:lr=0.0001,b1=0] [-o results/public.json]
        [--beside results/perf.json]

Each script runs as it is, in this process, with its own defaults (or the --set values for its
argparse options), but for four things: it reads Fashion-MNIST's training split (Debian's IDX files
behind torchvision's FashionMNIST) where it asks for MNIST; its printing and sample images go
nowhere; torch and numpy are seeded (0); and every 200 real batches (discriminator updates) the
clock stops while fid_domain is scored on 2,000 samples of its generator in eval mode, resized to
28x28 where the script trains at 32x32, with the scorer `bench perf` uses. The seconds are those
of training (from its first optimiser step, evaluations excluded), until fid_domain first drops
below the threshold. ``--beside`` draws each script's curve beside its ganbench variant's from a
``bench perf --time-to-quality`` JSON, into a PNG next to ``-o``.

Two scripts do not run as published, and get the one-token correction that lets them run:
dragan.py iterates over ``mnist_loader``, a name it never defines (its loader is ``dataloader``);
began.py reads a number as ``.data[0]``, which PyTorch 0.4 and later refuse on a 0-dim tensor
(``.item()``). Their other faults are kept and measured as they are (dragan.py's discriminator
steps on the penalty's gradient alone: its ``d_loss`` is computed but never backpropagated).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.torchvision_files import DEBIAN_FASHION_MNIST
from bench.scoring import Scorer

EVAL_EVERY_BATCHES = 200
SAMPLES = 2000
SOURCE_FIXES = {"dragan.py": ("mnist_loader", "dataloader"), "began.py": (".data[0]", ".item()")}  # see the docstring
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


class Finished(Exception):
    """Raised from the optimiser hook to leave the script's training loop."""


def fashion_root(folder: Path) -> Path:
    """A torchvision FashionMNIST root holding Debian's files, uncompressed as torchvision reads them."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as packed, open(raw / name, "wb") as plain:
            shutil.copyfileobj(packed, plain)
    return folder


def generated(namespace: dict, count: int, seed: int) -> torch.Tensor:
    """``count`` images of the script's generator in eval mode, as 28x28 in [-1, 1]; the inputs
    drawn as the script draws them (noise N(0, 1); cgan's labels; infogan's one-hot label and codes)."""
    generator, opt = namespace["generator"], namespace["opt"]
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(count, opt.latent_dim, generator=rng)
    labels = torch.arange(count) % getattr(opt, "n_classes", 10)
    if "code_dim" in vars(opt):  # InfoGAN: G(noise, one-hot label, continuous code U(-1, 1))
        code = torch.rand(count, opt.code_dim, generator=rng) * 2 - 1
        inputs = (z, F.one_hot(labels, opt.n_classes).float(), code)
    elif "n_classes" in vars(opt):  # CGAN: G(noise, label)
        inputs = (z, labels)
    else:
        inputs = (z,)
    generator.eval()
    with torch.no_grad():
        images = torch.cat([generator(*part) for part in zip(*(tensor.split(500) for tensor in inputs))])
    generator.train()
    if images.shape[-1] != 28:
        images = F.interpolate(images, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    return images.clamp(-1, 1)


def time_to_quality(script: Path, scorer: Scorer, run_dir: Path, *, threshold: float, max_seconds: float,
                    options: list[str]) -> dict:
    """Runs ``script`` with ``options`` in ``run_dir`` until its generator scores below ``threshold``."""
    namespace: dict = {}  # the script's globals, where the hook finds its generator and optimisers
    state = {"batches": 0, "g_steps": 0, "paused": 0.0, "started": None, "curve": []}

    def after_step(optimizer, args, kwargs) -> None:
        if state["started"] is None:
            state["started"] = time.perf_counter()
        if optimizer is namespace.get("optimizer_G"):
            state["g_steps"] += 1
        if optimizer is not namespace.get("optimizer_D"):
            return
        state["batches"] += 1
        if state["batches"] % EVAL_EVERY_BATCHES:
            return
        paused = time.perf_counter()
        seconds = paused - state["started"] - state["paused"]
        fid = scorer.score_images(generated(namespace, SAMPLES, seed=1))["fid_domain"]
        state["curve"].append({"batches": state["batches"], "g_steps": state["g_steps"], "seconds": round(seconds, 1),
                               "fid_domain": round(fid, 2)})
        state["paused"] += time.perf_counter() - paused
        if fid < threshold or seconds >= max_seconds:
            raise Finished

    hook = register_optimizer_step_post_hook(after_step)
    torch.manual_seed(0)
    np.random.seed(0)
    argv, cwd = sys.argv, os.getcwd()
    try:
        sys.argv = [str(script), *options]
        os.chdir(run_dir)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            source = script.read_text()
            if script.name in SOURCE_FIXES:
                source = source.replace(*SOURCE_FIXES[script.name])
            code = compile(source, str(script), "exec")
            namespace.update(__name__="__main__", __file__=str(script))
            exec(code, namespace)
    except Finished:
        pass
    finally:
        hook.remove()
        sys.argv = argv
        os.chdir(cwd)
    curve = state["curve"]
    reached = next((point for point in curve if point["fid_domain"] < threshold), None)
    return {"script": f"{script.parent.name}/{script.name}", "options": options, "threshold": threshold,
            "threads": torch.get_num_threads(), "seconds": reached and reached["seconds"],
            "batches": reached and reached["batches"], "g_steps": reached and reached["g_steps"],
            "g_steps_per_second": round(curve[-1]["g_steps"] / curve[-1]["seconds"], 2),
            "best_fid_domain": min(point["fid_domain"] for point in curve), "curve": curve}


VARIANT_OF = {"relativistic_gan": "ragan"}  # script folder -> ganbench variant where the names differ


def plot_beside(rows: list[dict], ours: list[dict], out: Path) -> None:
    """One panel per script: its fid_domain curve and its ganbench variant's, against training seconds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = {row["variant"]: row for row in ours}
    columns = 4
    fig, axes = plt.subplots(-(-len(rows) // columns), columns, figsize=(14, 3 * -(-len(rows) // columns)),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        folder = row["script"].split("/")[0]
        name = VARIANT_OF.get(folder, folder)
        if name in ours:
            variant = ours[name]
            ax.plot([0] + [point["seconds"] for point in variant["curve"]],
                    [variant["untrained_fid_domain"]] + [point["fid_domain"] for point in variant["curve"]],
                    marker=".", label=f"ganbench {name}")
        ax.plot([point["seconds"] for point in row["curve"]], [point["fid_domain"] for point in row["curve"]],
                marker=".", label=row["script"].split("/")[1])
        ax.axhline(row["threshold"], color="grey", lw=0.8, ls="--")
        ax.set(title=name, xlabel="training seconds", ylabel="fid_domain")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a clone of eriklindernoren/PyTorch-GAN")
    parser.add_argument("--scripts", default="wgan,wgan_gp", help="comma-separated implementations/<name>")
    parser.add_argument("--threshold", type=float, default=300)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="NAME:OPTION=VALUE,...",
                        help="argparse options for one script, e.g. wgan_gp:lr=0.0001,b1=0")
    parser.add_argument("-o", "--out", type=Path)
    parser.add_argument("--beside", type=Path, metavar="PERF_JSON",
                        help="a `bench perf --time-to-quality` report to plot beside (needs -o)")
    args = parser.parse_args()
    if args.beside and not args.out:
        parser.error("--beside draws next to -o: give -o too")
    scripts = [args.checkout / "implementations" / name / f"{name}.py" for name in args.scripts.split(",")]
    missing = [str(script) for script in scripts if not script.is_file()]
    if missing:
        parser.error(f"no {missing[0]}: give a clone of eriklindernoren/PyTorch-GAN and names from its implementations/")
    beside = None
    if args.beside:  # read now, not after the scripts' minutes of training
        try:
            beside = json.loads(args.beside.read_text())["time_to_quality"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--beside {args.beside}: not a `bench perf --time-to-quality` report ({error!r})")
    overrides = {}
    for item in args.set:
        name, _, pairs = item.partition(":")
        overrides[name] = [part for pair in pairs.split(",") for option, _, value in [pair.partition("=")]
                           for part in (f"--{option}", value)]
    scorer = Scorer("fashion-mnist", "domain")
    work = Path(tempfile.mkdtemp(prefix="public-ttq-"))
    root = fashion_root(work / "data")
    run_dir = work / "a" / "b"  # the scripts write to ../../data and ./images
    run_dir.mkdir(parents=True)
    torchvision.datasets.MNIST = lambda *args, transform=None, **kwargs: torchvision.datasets.FashionMNIST(
        root, train=True, download=False, transform=transform)
    torchvision.utils.save_image = lambda *args, **kwargs: None
    rows = []
    try:
        for script in scripts:
            row = time_to_quality(script, scorer, run_dir, threshold=args.threshold, max_seconds=args.max_seconds,
                                  options=overrides.get(script.parent.name, []))
            rows.append(row)
            if args.out:  # after each script, so that an interrupted run keeps those already timed
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))
            print(f"{row['script']} {' '.join(row['options'])}: {row['seconds']} s to fid_domain < {args.threshold} "
                  f"({row['batches']} real batches, {row['g_steps']} G steps, {row['g_steps_per_second']} G steps/s; "
                  f"best {row['best_fid_domain']})", flush=True)
    finally:
        shutil.rmtree(work)
    if beside is not None:
        plot_beside(rows, beside, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
