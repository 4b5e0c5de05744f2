"""Train the two ground-truth benchmark classifiers on synthetic scenes and export them to ONNX.

    python tools/train_synthetic.py [--out tsgb_onnx/data] [--nets vgg,resnet]

Multi-label task (new scenes every epoch, test scenes from another seed): each 64x64 scene
(`tsgb_onnx.evaluation.scenes`) holds 2-3 objects of 5 shape classes;
the nets output 5 logits trained with a per-class sigmoid (binary cross-entropy). Both nets
are small (VGG-style with two FC layers; ResNet-style with BatchNorm, residual blocks and
global average pooling), trained on CPU with fixed seeds, and written as
`synthetic_vgg.onnx` / `synthetic_resnet.onnx` (input "input" [B, 3, 64, 64], output
"logits" [B, 5]). Test accuracy (every present/absent decision right) is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tsgb_onnx.evaluation import scenes
from tsgb_onnx.io.export import from_torch

CLASSES = len(scenes.CLASSES)


class VGGStyle(nn.Module):
    """conv-conv-pool ×2, conv-pool, flatten, FC-ReLU-FC (the VGG pattern at 64x64)."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()

        def conv(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(3, 16),
            *conv(16, 16),
            nn.MaxPool2d(2),
            *conv(16, 32),
            *conv(32, 32),
            nn.MaxPool2d(2),
            *conv(32, 48),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(48 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, i, o, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(i, o, 3, stride, 1, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(),
            nn.Conv2d(o, o, 3, 1, 1, bias=False),
            nn.BatchNorm2d(o),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and i == o
            else nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


class ResNetStyle(nn.Module):
    """Stem, three residual stages (16, 32, 48 channels), global average pool, FC."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 48, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def dataset(count: int, seed: int):
    items = scenes.make_scenes(count, seed=seed)
    x = scenes.to_input(np.stack([s.rgb for s in items]))
    y = np.stack([s.labels for s in items])
    return torch.from_numpy(x), torch.from_numpy(y)


def train(net: nn.Module, count: int, epochs: int, seed: int, batch: int = 64) -> nn.Module:
    """Adam + one-cycle schedule; every epoch draws `count` new scenes (no scene is seen twice)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-5)
    steps = (count + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        x, y = dataset(count, seed=10_000 * (seed + 1) + epoch)
        net.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = x[idx]
            if torch.rand(1, generator=g).item() < 0.5:  # horizontal flip keeps every label
                xb = xb.flip(3)
            loss = loss_fn(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)
    return net.eval()


def accuracy(net: nn.Module, x, y) -> tuple[float, float]:
    with torch.no_grad():
        pred = (net(x) > 0).float()
    return float((pred == y).all(1).float().mean()), float((pred == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data"))
    p.add_argument("--train", type=int, default=3000, help="new scenes per epoch")
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--epochs-vgg", type=int, default=14)
    p.add_argument("--epochs-resnet", type=int, default=10)
    p.add_argument("--nets", default="vgg,resnet", help="which nets to train (comma list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xte, yte = dataset(args.test, seed=2000 + args.seed)
    summary_path = out / "synthetic_models.json"
    report = json.loads(summary_path.read_text())["models"] if summary_path.exists() else {}
    epochs = {"vgg": args.epochs_vgg, "resnet": args.epochs_resnet}
    for name, factory in (("vgg", VGGStyle), ("resnet", ResNetStyle)):
        if name not in args.nets.split(","):
            continue
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        print(f"training synthetic_{name} on {args.train} scenes", flush=True)
        net = train(factory(), args.train, epochs[name], args.seed)
        exact, per_label = accuracy(net, xte, yte)
        path = out / f"synthetic_{name}.onnx"
        from_torch(net, xte[:1], path)
        report[name] = {
            "epochs": epochs[name],
            "scene_accuracy": round(exact, 4),
            "label_accuracy": round(per_label, 4),
            "train_seconds": round(time.perf_counter() - start, 1),
            "bytes": path.stat().st_size,
        }
        print(
            f"  {path}: test scenes all-correct {exact:.3f}, labels correct {per_label:.3f}, "
            f"{report[name]['train_seconds']} s, {path.stat().st_size / 1e6:.2f} MB",
            flush=True,
        )
    summary_path.write_text(
        json.dumps(
            {
                "classes": list(scenes.CLASSES),
                "input": [3, scenes.SIZE, scenes.SIZE],
                "mean": scenes.MEAN,
                "std": scenes.STD,
                "train": args.train,
                "test": args.test,
                "seed": args.seed,
                "models": report,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
