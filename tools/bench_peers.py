"""Every method beside its peer library, timed in one process on the same module and batch.

    python tools/bench_peers.py [--nets resnet50_style,vgg16_style,efficientnet_lite0]
                                [--batch 8] [--repeats 5] [--threads 2]

The product gets the PyTorch module itself (`Explainer(model, example=x, ...)`, in-memory
export, the default backend); the peers (Captum 0.9, pytorch-grad-cam 1.5.7, Zennit 0.5.1;
see tests/peers.py for their import) get the same module. The small nets are those of
tests/nets.py at 64x64 (random weights); EfficientNet-Lite0 is the pretrained one at 224x224.
Torch and ONNX Runtime both get `--threads` threads. Each pair is timed in rounds (median of
`--repeats`; in each round both run twice and the second run is timed, after a 0.1 s pause),
so both share the machine's state. Prints a Markdown table: seconds per batch and the
product's speed-up (peer time / product time; > 1 means the product is faster).

Copies (Integrated Gradients' steps, SmoothGrad's samples) run 64 rows at a time on both
sides (the product's default `batch_size`; Captum's `internal_batch_size` /
`nt_samples_batch_size`): unchunked, Captum's 32 steps × 8 rows of EfficientNet-Lite0 at 224
px do not fit this machine's 24 GB.

Setup: the product's construction (export, compile) is not timed, nor is the peer's (hooks,
composites); both are built once and called `--repeats` times.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            time.sleep(0.1)
            fn()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}


def load_net(name: str):
    import torch

    if name == "efficientnet_lite0":
        from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

        return efficientnet_lite0(pretrained=True).eval(), (3, 224, 224)
    import nets

    model = getattr(nets, name)().eval()
    for module in model.modules():  # Captum's and Zennit's hooks need out-of-place ReLUs
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model, (3, 64, 64)


def last_spatial_module(model, x):
    """The module whose output is the last spatial feature map (Grad-CAM's usual layer)."""
    import torch

    shapes = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, o))
        for n, m in model.named_modules()
        if n and not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    spatial = [n for n, o in shapes.items() if isinstance(o, torch.Tensor) and o.ndim == 4]
    spatial = [n for n in spatial if shapes[n].shape[-1] > 1]
    return spatial[-1]


def pairs(model, layer: str, x, targets):
    """(product method, product call options, peer name, peer callable) per comparison."""
    import torch
    from peers import import_peer

    captum = import_peer("captum", "attr").attr
    cams = import_peer("pytorch_grad_cam", "utils.model_targets")
    zennit = import_peer("zennit", "composites", "rules", "types", "attribution")
    module = model.get_submodule(layer)
    t = torch.as_tensor(targets)
    cam_targets = [cams.utils.model_targets.ClassifierOutputTarget(int(c)) for c in targets]

    def captum_call(cls, **kw):
        attributor = cls(model)
        return lambda: attributor.attribute(x, target=t, **kw)

    # pytorch-grad-cam hooks the model while its object lives (FullGrad: every conv and BN
    # stores its activations on each forward): built when its pair runs, released after
    grad_cam = _Hooked(lambda: cams.GradCAM(model=model, target_layers=[module]))
    full_grad = _Hooked(lambda: cams.FullGrad(model=model, target_layers=[]))
    layer_cam = captum.LayerGradCam(model, module)
    eps = zennit.rules.Epsilon(epsilon=1e-6)
    composite = zennit.composites.LayerMapComposite(
        [(zennit.types.Convolution, eps), (torch.nn.Linear, eps)]
    )
    onehot = torch.eye(model(x[:1]).shape[1])[t]

    def zennit_call():
        with zennit.attribution.Gradient(model=model, composite=composite) as attributor:
            return attributor(x, lambda out: out * onehot)

    def layer_gradcam():
        cam = layer_cam.attribute(x, target=t, relu_attributions=True)
        return captum.LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="bilinear")

    return [
        ("gradient", {}, "Captum Saliency", captum_call(captum.Saliency, abs=False)),
        ("input_x_gradient", {}, "Captum InputXGradient", captum_call(captum.InputXGradient)),
        ("guided_backprop", {}, "Captum GuidedBackprop", captum_call(captum.GuidedBackprop)),
        ("deconvnet", {}, "Captum Deconvolution", captum_call(captum.Deconvolution)),
        ("deeplift", {}, "Captum DeepLift", captum_call(captum.DeepLift)),
        (
            "integrated_gradients",
            {"steps": 32, "quadrature": "gausslegendre"},
            "Captum IntegratedGradients",
            captum_call(captum.IntegratedGradients, n_steps=32, internal_batch_size=64),
        ),
        (
            "smoothgrad",
            {"n": 25, "sigma": 0.1, "sigma_mode": "absolute"},
            "Captum NoiseTunnel(Saliency)",
            lambda: captum.NoiseTunnel(captum.Saliency(model)).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=25,
                nt_samples_batch_size=max(1, 64 // len(x)),
                stdevs=0.1,
                target=t,
                abs=False,
            ),
        ),
        ("gradcam", {"layer": layer}, "Captum LayerGradCam", layer_gradcam),
        (
            "gradcam",
            {"layer": layer},
            "pytorch-grad-cam GradCAM",
            lambda: grad_cam.get()(input_tensor=x, targets=cam_targets),
        ),
        (
            "fullgrad",
            {},
            "pytorch-grad-cam FullGrad",
            lambda: full_grad.get()(input_tensor=x, targets=cam_targets),
        ),
        ("lrp_epsilon", {"epsilon": 1e-6}, "Zennit Epsilon", zennit_call),
    ]


class _Hooked:
    """A pytorch-grad-cam object built on first use; `release()` removes its hooks."""

    live: list = []

    def __init__(self, make):
        self.make, self.obj = make, None

    def get(self):
        if self.obj is None:
            with warnings.catch_warnings(), _silence():
                warnings.simplefilter("ignore")
                self.obj = self.make()
            _Hooked.live.append(self)
        return self.obj

    @classmethod
    def release_all(cls) -> None:
        for hooked in cls.live:
            hooked.obj.activations_and_grads.release()
            hooked.obj = None
        cls.live.clear()


class _silence:
    """pytorch-grad-cam prints a note when FullGrad's target_layers are ignored."""

    def __enter__(self):
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)


def bench_net(name: str, batch: int, repeats: int, threads: int) -> list[tuple]:
    import torch

    from tsgb_onnx import Explainer

    model, shape = load_net(name)
    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(0))
    targets = [int(c) for c in np.arange(batch) % 5]
    layer = last_spatial_module(model, x[:1])
    rows = []
    built: dict = {}
    for method, options, peer, peer_fn in pairs(model, layer, x, targets):
        key = (method, tuple(sorted(options.items())))
        if key not in built:
            built.clear()  # one explainer alive at a time: Lite0's sessions are large
            gc.collect()
            built[key] = Explainer(model, example=x[:1], method=method, threads=threads, **options)
        explainer = built[key]

        def ours(explainer=explainer):
            return explainer.explain(x, target=targets)

        with warnings.catch_warnings(), _silence():
            warnings.simplefilter("ignore")
            try:
                peer_fn()
            except Exception as exc:  # e.g. Captum's DeepLift on a ReLU module used twice
                reason = str(exc).split(".")[0]
                _Hooked.release_all()
                times = interleaved_medians({"ours": ours}, repeats)
                rows.append((name, method, f"{peer} (refuses: {reason})", times["ours"], None))
                print(
                    f"  {name:18s} {method:22s} {times['ours']:.4f}s  {peer}: refuses",
                    file=sys.stderr,
                )
                continue
            times = interleaved_medians({"ours": ours, "peer": peer_fn}, repeats)
        _Hooked.release_all()
        rows.append((name, method, peer, times["ours"], times["peer"]))
        print(
            f"  {name:18s} {method:22s} {times['ours']:.4f}s  {peer:30s} {times['peer']:.4f}s",
            file=sys.stderr,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="resnet50_style,vgg16_style,efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.nets.split(","):
        rows += bench_net(name, args.batch, args.repeats, args.threads)
    import captum
    import onnxruntime

    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, captum {captum.__version__}; batch "
        f"{args.batch}, {args.threads} threads, median of {args.repeats}\n"
    )
    print("| net | method | product s | peer | peer s | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, method, peer, ours, theirs in rows:
        if theirs is None:
            print(f"| {name} | {method} | {ours:.4f} | {peer} | — | — |")
        else:
            speedup = theirs / ours
            print(f"| {name} | {method} | {ours:.4f} | {peer} | {theirs:.4f} | {speedup:.2f}x |")


if __name__ == "__main__":
    main()
