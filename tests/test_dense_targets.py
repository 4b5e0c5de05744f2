"""Dense outputs (issue 19): explain an output channel summed over a mask of its positions.

A tiny fully-convolutional segmentation net (conv-BN-ReLU, max pool, conv-ReLU, 1x1 conv to
4 channels, 2x bilinear upsample back to 32x32) and a sequence head ([B, T, C] from a Linear)
are exported with `from_torch`. The product's gradient for `DenseTarget(c, mask)` is held to
float64 PyTorch autograd of ``(out[:, c] * mask).sum()`` on both backends (1e-4 of the max);
a box equals its mask; per-row masks; the methods that apply agree across backends (guided
backprop and Grad-CAM also with PyTorch), those that need a class refuse with their reason;
bad targets are typed one-line errors; `tsgb explain --target-mask / --target-box` writes
the API's maps.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

from tsgb_onnx import DenseTarget, Explainer
from tsgb_onnx.cli.main import main
from tsgb_onnx.errors import MethodError, TargetError
from tsgb_onnx.explainer import EngineFallbackWarning
from tsgb_onnx.io.export import from_torch

torch = pytest.importorskip("torch")
nn = torch.nn
Image = pytest.importorskip("PIL.Image")

SIZE, CHANNELS, BATCH = 32, 4, 3
BACKENDS = ("numpy", "compiled")


# --------------------------------------------------------------------------- nets and oracle


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward is guided backprop's: G * (X > 0) * (G > 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


class Guided(nn.Module):
    def forward(self, x):
        return GuidedReLU.apply(x)


def seg_net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU, pool, conv-ReLU, 1x1 conv to CHANNELS, 2x bilinear upsample."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, CHANNELS, 1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    )
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


class SeqHead(nn.Module):
    """A text-recognition-like head: conv features averaged over height, a Linear per
    column: output [B, T=32, C=5] (channels last)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x)).mean(dim=2)  # [B, 8, W]
        return self.fc(features.permute(0, 2, 1))  # [B, W, 5]


@pytest.fixture(scope="module")
def seg():
    net = seg_net()
    return net, from_torch(net, torch.zeros(1, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def seg_half(seg):
    """The same net without its upsample: a Conv produces the map [B, 4, 16, 16] (so
    contrastive EBP finds its top layer and is refused for the dense target only)."""
    net, _ = seg
    return from_torch(net[:7], torch.zeros(1, 3, SIZE, SIZE))


def _input(seed: int = 0, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


def _oracle(net, x, channels, masks, axis: int = 1):
    """float64 autograd of sum_b (out[b, c_b] * mask_b).sum() w.r.t. the input, and out."""
    model = copy.deepcopy(net).double()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = model(xt)
    score = 0
    for b, (c, m) in enumerate(zip(channels, masks)):
        plane = out[b].movedim(axis - 1, 0)[c]
        score = score + (plane * torch.as_tensor(np.asarray(m, np.float64))).sum()
    (grad,) = torch.autograd.grad(score, xt)
    return grad.numpy(), out.detach().numpy()


def _close(got, ref, tol: float = 1e-4) -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    scale = max(np.abs(ref).max(), 1e-12)
    assert np.abs(got - ref).max() <= tol * scale, np.abs(got - ref).max() / scale


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- the gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_equals_autograd_of_masked_channel(seg, backend):
    net, proto = seg
    x = _input(0)
    mask = np.random.default_rng(1).random((SIZE, SIZE)) > 0.6
    res = Explainer(proto, method="gradient", backend=backend).explain(
        x, target=DenseTarget(2, mask=mask)
    )
    ref, out = _oracle(net, x, [2] * BATCH, [mask] * BATCH)
    _close(res.signal, ref)
    _close(res.saliency, (ref * x).sum(1))
    assert res.logits.shape == (BATCH, CHANNELS, SIZE, SIZE)
    assert [t.channel for t in res.target] == [2] * BATCH
    for b in range(BATCH):
        expected = float((out[b, 2] * mask).sum())
        assert res.target[b].score(res.logits[b]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_auto_backend_compiles_dense_targets(seg):
    _, proto = seg
    x = _input(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        explainer = Explainer(proto, method="gradient")
        auto = explainer.explain(x, target=DenseTarget(1, box=(2, 3, 30, 20)))
    assert any(key[-1] == "dense" and s is not None for key, s in explainer._compiled.items())
    engine = Explainer(proto, method="gradient", backend="numpy")
    _close(auto.saliency, engine.explain(x, target=DenseTarget(1, box=(2, 3, 30, 20))).saliency)


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_equals_its_mask(seg, backend):
    _, proto = seg
    x = _input(3)
    explainer = Explainer(proto, method="gradient", backend=backend)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:20, 6:27] = True
    by_box = explainer.explain(x, target=DenseTarget(3, box=(4, 6, 20, 27)))
    by_mask = explainer.explain(x, target=DenseTarget(3, mask=mask))
    np.testing.assert_allclose(by_box.saliency, by_mask.saliency, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(by_box.target[0].mask, mask.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_masks_and_targets(seg, backend):
    net, proto = seg
    x = _input(4)
    rng = np.random.default_rng(5)
    masks = rng.random((BATCH, SIZE, SIZE)) > 0.5
    explainer = Explainer(proto, method="gradient", backend=backend)
    res = explainer.explain(x, target=DenseTarget(1, mask=masks))  # one mask per row
    ref, _ = _oracle(net, x, [1] * BATCH, masks)
    _close(res.signal, ref)
    box = np.zeros((SIZE, SIZE))
    box[0:8, 10:32] = 1
    weights = rng.random((SIZE, SIZE)).astype(np.float32)  # float weights, not only 0/1
    rows = [DenseTarget(0, mask=weights), DenseTarget(3, box=(0, 10, 8, 32)), DenseTarget(2)]
    res = explainer.explain(x, target=rows)
    ref, _ = _oracle(net, x, [0, 3, 2], [weights, box, np.ones((SIZE, SIZE))])
    _close(res.signal, ref)
    assert [t.channel for t in res.target] == [0, 3, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_head_channels_last(backend):
    net = SeqHead().eval()
    proto = from_torch(net, torch.zeros(1, 3, SIZE, SIZE))
    x = _input(6, batch=2)
    mask = np.zeros(SIZE)
    mask[5:12] = 1
    explainer = Explainer(proto, method="gradient", backend=backend)
    res = explainer.explain(x, target=DenseTarget(4, mask=mask, axis=-1))
    ref, _ = _oracle(net, x, [4, 4], [mask, mask], axis=2)
    _close(res.signal, ref)
    by_box = explainer.explain(x, target=DenseTarget(4, box=(5, 12), axis=2))
    np.testing.assert_allclose(by_box.saliency, res.saliency, rtol=1e-6, atol=1e-9)
    with pytest.raises(MethodError) as exc:  # TSGB-FC needs class logits
        Explainer(proto, method="tsgb", backend=backend).explain(
            x, target=DenseTarget(4, mask=mask, axis=-1)
        )
    assert "TSGB-FC" in _one_line(exc) and "dense output" in str(exc.value)


def test_torch_input_and_explain_layers(seg):
    net, proto = seg
    x = _input(17, batch=2)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[5:25, 5:25] = True
    explainer = Explainer(proto, method="gradient")
    res = explainer.explain(torch.from_numpy(x), target=DenseTarget(0, mask=mask))
    assert isinstance(res.saliency, torch.Tensor) and res.target[0].channel == 0
    ref, _ = _oracle(net, x, [0, 0], [mask, mask])
    _close(res.signal.numpy(), ref)
    layer = [n.output[0] for n in proto.graph.node if n.op_type == "Relu"][-1]
    both = explainer.explain_layers(x, [layer, "input"], target=DenseTarget(0, mask=mask))
    _close(both["input"].signal, ref)
    assert both[layer].signal.shape == (2, 8, SIZE // 2, SIZE // 2)


# --------------------------------------------------------------------------- the methods

APPLY = [
    ("input_x_gradient", {}),
    ("guided_backprop", {}),
    ("deconvnet", {}),
    ("tsgb", {}),
    ("deeplift", {}),
    ("lrp_epsilon", {}),
    ("ebp", {}),
    ("smoothgrad", {"n": 4}),
    ("integrated_gradients", {"steps": 4}),
    ("gradcam", {}),
    ("fullgrad", {}),
    ("normgrad", {}),
]


@pytest.mark.parametrize("method,options", APPLY, ids=[m for m, _ in APPLY])
def test_methods_that_apply_agree_across_backends(seg, method, options):
    _, proto = seg
    x = _input(7, batch=2)
    target = DenseTarget(2, box=(8, 8, 24, 24))
    maps = []
    for backend in BACKENDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tsgb: no TSGB-FC; ebp: the top layer
            explainer = Explainer(proto, method=method, backend=backend, **options)
            res = explainer.explain(x, target=target)
        assert res.saliency.shape == (2, SIZE, SIZE)
        assert np.isfinite(res.saliency).all() and np.abs(res.saliency).max() > 0
        assert [t.channel for t in res.target] == [2, 2]
        maps.append(res.saliency)
    _close(maps[1], maps[0])


def test_tsgb_without_a_linear_head_is_its_conv_rule_and_says_so(seg):
    _, proto = seg
    with pytest.warns(UserWarning, match="TSGB-FC is not applied"):
        explainer = Explainer(proto, method="tsgb", backend="numpy")
    res = explainer.explain(_input(8, batch=1), target=DenseTarget(0))
    assert np.isfinite(res.saliency).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_guided_backprop_equals_torch(seg, backend):
    net, proto = seg
    guided = copy.deepcopy(net)
    guided[2], guided[5] = Guided(), Guided()
    x = _input(9)
    mask = np.random.default_rng(10).random((SIZE, SIZE)) > 0.7
    res = Explainer(proto, method="guided_backprop", backend=backend).explain(
        x, target=DenseTarget(1, mask=mask)
    )
    ref, _ = _oracle(guided, x, [1] * BATCH, [mask] * BATCH)
    _close(res.signal, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcam_at_a_layer_equals_torch(seg, backend):
    net, proto = seg
    layer = [n.output[0] for n in proto.graph.node if n.op_type == "Relu"][-1]
    x = _input(11)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:30, 0:16] = True
    res = Explainer(proto, method="gradcam", backend=backend, upsample="none").explain(
        x, target=DenseTarget(3, mask=mask), layer=layer
    )
    model = copy.deepcopy(net).double()
    kept = {}
    model[5].register_forward_hook(lambda m, i, o: kept.update(a=o))
    out = model(torch.tensor(x, dtype=torch.float64))
    (grad,) = torch.autograd.grad((out[:, 3] * torch.as_tensor(mask)).sum(), kept["a"])
    a, g = kept["a"].detach().numpy(), grad.numpy()
    cam = np.maximum((g.mean(axis=(2, 3), keepdims=True) * a).sum(1), 0)
    _close(res.saliency, cam)


REFUSE = [
    ("groupcam", {}, "softmax"),
    ("contrastive_ebp", {}, "dual"),
    ("meta_saliency", {}, "class logit"),
    ("normgrad", {"meta_saliency": True}, "class logit"),
]


@pytest.mark.parametrize("method,options,why", REFUSE, ids=[m for m, o, _ in REFUSE])
def test_methods_that_need_a_class_refuse(seg_half, method, options, why):
    proto = seg_half
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = Explainer(proto, method=method, backend="numpy", **options)
        with pytest.raises(MethodError) as exc:
            explainer.explain(_input(12, batch=1), target=DenseTarget(0))
    message = _one_line(exc)
    assert f"method '{method}' does not apply to a dense output" in message and why in message


def test_smoothgrad_over_a_refused_base_refuses(seg_half):
    proto = seg_half
    explainer = Explainer(proto, method="smoothgrad", base="contrastive_ebp", n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MethodError, match="contrastive_ebp' does not apply"):
            explainer.explain(_input(12, batch=1), target=DenseTarget(0))


# --------------------------------------------------------------------------- errors


def test_class_target_on_a_dense_output_says_what_to_pass(seg):
    _, proto = seg
    x = _input(13, batch=2)
    for backend in ("auto", "numpy"):
        explainer = Explainer(proto, method="gradient", backend=backend)
        for target in (3, None, [1, 2]):
            with warnings.catch_warnings():
                warnings.simplefilter("error", EngineFallbackWarning)
                with pytest.raises(TargetError) as exc:
                    explainer.explain(x, target=target)
            message = _one_line(exc)
            assert "DenseTarget(channel" in message and "--target-mask" in message


BAD = [
    (lambda: DenseTarget(9), "channel 9 is out of range"),
    (lambda: DenseTarget(0, mask=np.ones((16, 16))), "mask has shape [16, 16]"),
    (lambda: DenseTarget(0, mask=np.ones((2, SIZE, SIZE))), "mask has shape [2, 32, 32]"),
    (lambda: DenseTarget(0, box=(0, 0, 40, 10)), "reaches past"),
    (lambda: DenseTarget(0, box=(0, 0, 4)), "(y0, x0, y1, x1)"),
    (lambda: DenseTarget(0, mask=np.zeros((SIZE, SIZE))), "selects no output position"),
    (lambda: DenseTarget(0, axis=4), "not a channel axis"),
    (lambda: [DenseTarget(0), 1, 2], "mix"),
    (lambda: [DenseTarget(0), DenseTarget(1)], "got 2 DenseTargets for a batch of 3"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make,fragment", BAD, ids=[f for _, f in BAD])
def test_bad_dense_targets_are_one_line_target_errors(seg, backend, make, fragment):
    _, proto = seg
    explainer = Explainer(proto, method="gradient", backend=backend)
    with pytest.raises(TargetError) as exc:
        explainer.explain(_input(14), target=make())
    assert fragment in _one_line(exc)


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: DenseTarget(-1), "non-negative int"),
        (lambda: DenseTarget(1.5), "non-negative int"),
        (lambda: DenseTarget(0, mask=np.ones((4, 4)), box=(0, 0, 2, 2)), "not both"),
        (lambda: DenseTarget(0, box=(5, 5, 5, 9)), "is empty"),
        (lambda: DenseTarget(0, mask=np.full((4, 4), np.nan)), "NaN"),
        (lambda: DenseTarget(0, mask="everything"), "bool or number array"),
        (lambda: DenseTarget(0, axis=0), "batch"),
    ],
)
def test_bad_dense_target_construction(make, fragment):
    with pytest.raises(TargetError) as exc:
        make()
    assert fragment in _one_line(exc)


def test_dense_target_on_a_classifier_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    proto = from_torch(net.eval(), torch.zeros(1, 3, 8, 8))
    explainer = Explainer(proto, method="gradient", backend="numpy")
    with pytest.raises(TargetError) as exc:
        explainer.explain(np.ones((1, 3, 8, 8), np.float32), target=DenseTarget(1))
    assert "give the class index" in _one_line(exc)


def test_check_target_refuses_before_any_input(seg):
    """`check_target` gives the errors explaining would, without an input (a driver
    checks once what every worker would refuse)."""
    _, proto = seg
    explainer = Explainer(proto, method="gradient")
    explainer.check_target(DenseTarget(2, box=(0, 0, 4, 4)))  # fits: nothing raised
    explainer.check_target([DenseTarget(1), DenseTarget(3, mask=np.ones((SIZE, SIZE)))])
    for target, fragment in [
        (DenseTarget(2, mask=np.ones((SIZE, SIZE // 2))), "mask of shape"),
        (DenseTarget(CHANNELS), "out of range"),
        (2, "DenseTarget"),  # a class target on the dense output
    ]:
        with pytest.raises(TargetError) as exc:
            explainer.check_target(target)
        assert fragment in _one_line(exc)
    with pytest.raises(MethodError, match="softmax"):
        Explainer(proto, method="groupcam").check_target(DenseTarget(1))


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli_files(seg, tmp_path_factory):
    net, _ = seg
    root = tmp_path_factory.mktemp("dense_cli")
    model = root / "seg.onnx"
    from_torch(net, torch.zeros(1, 3, SIZE, SIZE), model)
    x = _input(15, batch=2)
    np.save(root / "x.npy", x)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[3:19, 7:29] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "small.png")
    rgb = np.random.default_rng(16).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "photo.png")
    return root, x, mask


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), err
    return lines[0]


def test_cli_target_mask_and_box_write_the_api_maps(seg, cli_files, capsys):
    _, proto = seg
    root, x, mask = cli_files
    api = Explainer(proto, method="gradient").explain(x, target=DenseTarget(2, mask=mask))
    for region in (["--target-mask", root / "mask.png"], ["--target-box", "3,7,19,29"]):
        out = root / "maps.npy"
        code, stdout, err = _run(
            capsys, "explain", root / "seg.onnx", root / "x.npy", "--method", "gradient",
            "--target", "2", *region, "--out", out,
        )  # fmt: skip
        assert code == 0, err
        np.testing.assert_allclose(np.load(out), api.saliency, rtol=1e-5, atol=1e-7)
        assert stdout.count("target channel 2") == 2 and "score" in stdout


def test_cli_dense_png_and_folder(cli_files, capsys):
    root, _, _ = cli_files
    out = root / "photo_map.png"
    code, _, err = _run(
        capsys, "explain", root / "seg.onnx", root / "photo.png", "--method", "gradient",
        "--target", "1", "--target-box", "0,0,16,16", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(out).size[0] >= SIZE
    folder = root / "maps"
    code, _, err = _run(
        capsys, "explain", root / "seg.onnx", root / "photo.png", "--method", "gradient",
        "--target", "1", "--target-mask", root / "mask.png", "--out-dir", folder,
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((folder / "results.json").read_text())["inputs"][0]["maps"][0]
    assert record["target"] == 1 and record["prob"] is None and np.isfinite(record["score"])
    assert (folder / record["png"]).exists()


def test_cli_convert_seed_input_writes_a_dense_target_explainer(seg, cli_files, capsys):
    """`tsgb convert --seed-input`: an explainer fed the dense target's seed (channel one-hot
    x mask) in plain ONNX Runtime gives the API's map."""
    import onnxruntime as ort

    from tsgb_onnx.methods.result import dense_seed, resolve_dense_targets

    _, proto = seg
    root, x, mask = cli_files
    out = root / "seg_explainer.onnx"
    args = ["convert", root / "seg.onnx", "-o", out, "--method", "guided_backprop"]
    code, stdout, err = _run(capsys, *args, "--seed-input")
    assert code == 0, err
    assert "seed" in stdout.split("inputs: ")[1].split(";")[0], stdout
    target = DenseTarget(2, mask=mask)
    want = Explainer(proto, method="guided_backprop").explain(x, target=target)
    resolved = resolve_dense_targets(target, want.logits.shape, 1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][1:] == ["seed"]  # no `target`
    feeds = {session.get_inputs()[0].name: x, "seed": dense_seed(resolved, want.logits.shape)}
    (saliency,) = session.run(["saliency"], feeds)
    _close(saliency, want.saliency)
    code, _, err = _run(capsys, *args, "--seed-input", "--optional-target")
    assert "optional_target" in _one_error(code, err)


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--target", "2"], "--target-mask"),  # a class target on a dense output
        (["--target-mask", "MASK"], "give --target CHANNEL"),
        (["--target", "2", "--target-mask", "SMALL"], "mask of shape [32, 32]"),
        (["--target", "7", "--target-box", "0,0,4,4"], "channel 7 is out of range"),
        (["--target", "2", "--target-box", "0,0,4,40"], "reaches past"),
        (["--target", "2", "--target-mask", "MASK", "--top-k", "2"], "--top-k"),
        (["--target", "2", "--target-mask", "MASK", "--format", "html"], "HTML"),
        (["--target", "2", "--target-mask", "MASK", "--target-box", "0,0,4,4"], "not allowed"),
        (["--target", "2", "--target-box", "1,2,3"], "y0,x0,y1,x1"),
        (["--target", "2", "--target-mask", "missing.png"], "does not exist"),
        (["--method", "groupcam", "--target", "2", "--target-box", "0,0,4,4"], "softmax"),
    ],
)
def test_cli_dense_errors_are_one_line(cli_files, capsys, extra, fragment):
    root, _, _ = cli_files
    names = {"MASK": str(root / "mask.png"), "SMALL": str(root / "small.png")}
    extra = [names.get(a, a) for a in extra]
    if "--method" not in extra:
        extra += ["--method", "gradient"]
    code, _, err = _run(capsys, "explain", root / "seg.onnx", root / "x.npy", *extra)
    assert fragment in _one_error(code, err)
