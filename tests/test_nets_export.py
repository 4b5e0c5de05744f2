"""The reference nets export with both exporters and ONNX Runtime reproduces PyTorch;
the pretrained EfficientNet-Lite0 recognises the two test photos through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from nets import REFERENCE_NETS  # noqa: E402  (conftest puts tests/ on sys.path)

EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name", list(REFERENCE_NETS))
def test_reference_net_matches_torch(onnx_zoo, name, dynamo):
    model, proto = onnx_zoo.get(name, dynamo)
    shape = REFERENCE_NETS[name][1]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    in_dims, out_dims = _dims(proto.graph.input[0]), _dims(proto.graph.output[0])
    assert isinstance(in_dims[0], str) and in_dims[0], in_dims  # symbolic batch
    assert isinstance(out_dims[0], str) and out_dims[0], out_dims
    assert in_dims[1:] == list(shape)
    assert not any(n.op_type == "Dropout" for n in proto.graph.node)

    sess = _session(proto)
    for batch in (1, 2):
        x = onnx_zoo.example(name, batch=batch, seed=10 + batch)
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = sess.run(None, {"input": x.numpy()})
        assert out.shape == ref.shape
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(out - ref).max()) / scale
        assert err < 1e-4, f"{name} batch {batch}: relative max error {err:.2e}"


def test_reference_nets_are_deterministic_and_small():
    for name, (factory, _shape) in REFERENCE_NETS.items():
        a, b = factory(), factory()
        assert not a.training
        n_params = sum(p.numel() for p in a.parameters())
        assert n_params < 400_000, (name, n_params)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), (name, ka)
        for m in a.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))
                assert not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean))


def test_efficientnet_lite0_classifies_photos_through_ort(onnx_zoo, lite0_torch, photos):
    from tsgb_onnx.io.zoo.efficientnet_lite0 import IMAGENET_CLASS_NAMES_SUBSET

    assert sum(p.numel() for p in lite0_torch.parameters()) == 4_652_008
    assert len(lite0_torch.state_dict()) == 296
    _, proto = onnx_zoo.get("efficientnet_lite0", dynamo=False)
    # TF-"SAME" padding is an explicit F.pad, written as Pad nodes before the kxk convs
    assert sum(n.op_type == "Pad" for n in proto.graph.node) == 17
    sess = _session(proto)
    expected = {"chelsea": 285, "coffee": 967}
    batch = np.concatenate([photos["chelsea"], photos["coffee"]])
    (logits,) = sess.run(None, {"input": batch})
    with torch.no_grad():
        ref = lite0_torch(torch.from_numpy(batch)).numpy()
    assert float(np.abs(logits - ref).max()) < 1e-3 * float(np.abs(ref).max())
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, (photo, cls) in enumerate(expected.items()):
        top = int(probs[row].argmax())
        assert top == cls, (
            f"{photo}: got {top}, expected {cls} ({IMAGENET_CLASS_NAMES_SUBSET[cls]})"
        )
        assert probs[row, cls] > 0.6, (photo, float(probs[row, cls]))
