"""Failures are never silent (issue 20, items 2 and 8).

* A model whose weights hold NaN is refused when the Explainer is built or `convert` runs,
  naming the constant and its node; a forward pass that overflows to Inf/NaN is refused by
  `explain` / `signals` / `vjp` / `infer` (compiled and engine paths, map methods too),
  naming the first non-finite tensor and its node; the CLI prints one line, exits 2 and
  writes nothing.
* onnx-graphsurgeon's constant folding is not allowed to fail quietly (it logs and returns
  the graph unfolded): its real cause is the error, and a memory failure says it is one.
* backend='auto' falling back from the compiled explainer to the engine says so, once.

The models are real exports of the reference nets (`onnx_zoo`), edited in one initializer.
ONNX Runtime is only replaced to force a failure inside a third-party call.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from tsgb_onnx import Explainer, ModelError, TsgbError
from tsgb_onnx.cli.main import main
from tsgb_onnx.convert import convert, convert_vjp
from tsgb_onnx.errors import NonFiniteError, OutOfMemoryError, is_out_of_memory
from tsgb_onnx.explainer import EngineFallbackWarning
from tsgb_onnx.ir.graph import MetadataWarning, build_graph

NET = "vgg16_style"  # [B, 3, 64, 64], 10 classes, dynamic batch


# --------------------------------------------------------------------------- models


def _edited(proto: onnx.ModelProto, conv_index: int, edit) -> tuple[onnx.ModelProto, Any]:
    """A copy of `proto` whose `conv_index`-th Conv weight is `edit(weight)`."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    conv = [n for n in model.graph.node if n.op_type == "Conv"][conv_index]
    init = next(t for t in model.graph.initializer if t.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(init).copy()), init.name))
    return model, conv


def _first_non_finite_reference(proto: onnx.ModelProto, x: np.ndarray) -> str:
    """Independently of the package: every node output of `proto` run in ONNX Runtime, the
    first (in node order) holding NaN or Inf."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names)
    values = onnxruntime.InferenceSession(model.SerializeToString()).run(names, {"input": x})
    return next(t for t, v in zip(names, values) if not np.isfinite(v).all())


@pytest.fixture(scope="module")
def net(onnx_zoo):
    return onnx_zoo.get(NET, dynamo=False)[1]


@pytest.fixture(scope="module")
def x2(onnx_zoo):
    return onnx_zoo.example(NET, batch=2, seed=1).numpy()


@pytest.fixture(scope="module")
def nan_net(net):
    """One entry of the second conv's weight set to NaN."""

    def poison(w):
        w[1, 0, 1, 2] = np.nan
        return w

    return _edited(net, 1, poison)


@pytest.fixture(scope="module")
def overflow_net(net, x2):
    """The third conv's weight scaled by 1e38: every constant finite, the forward is not."""
    model, conv = _edited(net, 2, lambda w: w * np.float32(1e38))
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    assert np.isfinite(numpy_helper.to_array(weight)).all()
    first = _first_non_finite_reference(model, x2)
    assert first != "logits"  # an inner tensor: naming the logits would not do
    return model, first


@pytest.fixture(scope="module")
def files(tmp_path_factory, nan_net, overflow_net, x2):
    root = tmp_path_factory.mktemp("non_finite")
    paths = {"nan": root / "nan.onnx", "overflow": root / "overflow.onnx", "x": root / "x.npy"}
    onnx.save(nan_net[0], str(paths["nan"]))
    onnx.save(overflow_net[0], str(paths["overflow"]))
    np.save(paths["x"], x2)
    return paths


def _producer(proto: onnx.ModelProto, tensor: str) -> str:
    return next(n.name for n in proto.graph.node if tensor in n.output)


# --------------------------------------------------------------------------- NaN weights


@pytest.mark.parametrize("method", ["gradient", "tsgb", "gradcam", "smoothgrad"])
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_nan_weight_refused_when_built(nan_net, method, backend):
    model, conv = nan_net
    with pytest.raises(NonFiniteError) as info:
        Explainer(model, method=method, backend=backend)
    message = str(info.value)
    assert f"'{conv.input[1]}'" in message and f"'{conv.name}' (Conv)" in message
    assert "NaN" in message and "(1, 0, 1, 2)" in message and "\n" not in message


def test_nan_weight_refused_by_convert(nan_net):
    model, conv = nan_net
    for make in (convert, convert_vjp):
        with pytest.raises(NonFiniteError, match=f"'{conv.input[1]}'.*'{conv.name}'"):
            make(model, method="gradient")


def test_infinite_bound_is_not_a_broken_weight(onnx_zoo):
    """ReLU6's Clip with max=+Inf is a bound, not a NaN weight: it explains, finitely."""
    _, proto = onnx_zoo.get("mobilenetv2_style", dynamo=False)
    graph = build_graph(proto)
    clip = next(n for n in graph.nodes if n.op_type == "Clip" and n.is_const(2))
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    init = next(t for t in model.graph.initializer if t.name == clip.inputs[2])
    init.CopyFrom(numpy_helper.from_array(np.array(np.inf, np.float32), init.name))
    x = onnx_zoo.example("mobilenetv2_style", batch=1, seed=0).numpy()
    result = Explainer(model, method="gradient").explain(x)
    assert np.isfinite(result.saliency).all()


# --------------------------------------------------------------------------- overflow


def _assert_names_first(exc: NonFiniteError, proto: onnx.ModelProto, first: str) -> None:
    message = str(exc)
    assert f"tensor '{first}'" in message, message
    assert f"node '{_producer(proto, first)}'" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "method, backend",
    [(m, b) for m in ("gradient", "tsgb", "smoothgrad") for b in ("auto", "compiled", "numpy")]
    + [("gradcam", "auto"), ("groupcam", "numpy")],
)
def test_overflow_names_first_non_finite_tensor(overflow_net, x2, method, backend):
    model, first = overflow_net
    explainer = Explainer(model, method=method, backend=backend)
    with pytest.raises(NonFiniteError) as info:
        explainer.explain(x2)
    _assert_names_first(info.value, model, first)


def test_overflow_in_signals_vjp_infer(overflow_net, x2):
    model, first = overflow_net
    explainer = Explainer(model, method="gradient")
    calls = [
        lambda: explainer.signals(x2, None, [explainer.graph.input_name]),
        lambda: explainer.vjp(x2, np.ones((2, 10), np.float32)),
        lambda: explainer.infer(x2),
    ]
    for call in calls:
        with pytest.raises(NonFiniteError) as info:
            call()
        _assert_names_first(info.value, model, first)


def test_backward_only_non_finite_names_the_step(tmp_path):
    """Forward finite (x / tiny is 1e22), the gradient not (-h / x^2 is 1e44): the message
    names the backward step that overflows, on both backends."""
    torch = pytest.importorskip("torch")
    from tsgb_onnx.io.export import from_torch

    class DivNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x) / x).mean((2, 3)))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        proto = from_torch(DivNet().eval(), torch.ones(1, 3, 8, 8))
    div = next(n.name for n in proto.graph.node if n.op_type == "Div")
    x = np.ones((2, 3, 8, 8), np.float32)
    x[1, :, 3, 3] = -1e-22
    x[0, :, 3, 3] = 1e-22
    for backend in ("auto", "numpy"):
        explainer = Explainer(proto, method="gradient", backend=backend)
        assert np.isfinite(explainer.infer(x)).all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow notice
            with pytest.raises(NonFiniteError) as info:
                explainer.explain(x)
        message = str(info.value)
        assert "forward pass is finite" in message and f"'{div}' (Div)" in message, message


# --------------------------------------------------------------------------- CLI


def _cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tsgb_onnx.cli", *argv], capture_output=True, text=True
    )


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize("which", ["nan", "overflow"])
def test_cli_explain_refuses_non_finite(files, tmp_path, which, nan_net, overflow_net):
    out = tmp_path / "out"
    out.mkdir()
    proc = _cli("explain", str(files[which]), str(files["x"]), "--out", str(out / "m.png"))
    line = _one_error_line(proc)
    if which == "nan":
        assert f"'{nan_net[1].input[1]}'" in line
    else:
        assert f"tensor '{overflow_net[1]}'" in line
    assert list(out.iterdir()) == []


def test_cli_convert_refuses_nan_weight(files, tmp_path, nan_net):
    out = tmp_path / "explainer.onnx"
    line = _one_error_line(_cli("convert", str(files["nan"]), "-o", str(out)))
    assert f"'{nan_net[1].input[1]}'" in line and not out.exists()


# --------------------------------------------------------------------------- constant folding


@pytest.fixture(scope="module")
def folding_net(onnx_zoo):
    """A real export whose constant folding runs ONNX Runtime (checked below)."""
    return onnx_zoo.get("silu_se_net", dynamo=False)[1]


def _failing_sessions(monkeypatch, error: BaseException) -> list:
    """Every ONNX Runtime session raises `error`; returns the list of attempts."""
    tries = []

    def refuse(*args, **kwargs):
        tries.append(1)
        raise error

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    return tries


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("std::bad_alloc"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"),
    ],
)
def test_fold_out_of_memory_says_memory(folding_net, monkeypatch, capfd, error):
    tries = _failing_sessions(monkeypatch, error)
    with pytest.raises(OutOfMemoryError) as info:
        build_graph(folding_net)
    assert tries, "the folding of this model must call ONNX Runtime"
    message = str(info.value)
    assert "out of memory" in message and "folding" in message and "\n" not in message
    assert isinstance(info.value, MemoryError) and isinstance(info.value, TsgbError)
    assert capfd.readouterr().out == ""  # graphsurgeon's log is not printed to stdout


def test_fold_failure_is_the_error(folding_net, monkeypatch):
    """Not a later 'min/max must be constants': the folding's own cause."""
    _failing_sessions(monkeypatch, RuntimeError("[ONNXRuntimeError] : 1 : FAIL : kernel X"))
    with pytest.raises(ModelError, match="folding the model's constants failed.*kernel X"):
        Explainer(folding_net, method="gradient")


def test_fold_out_of_memory_in_the_cli(folding_net, tmp_path, monkeypatch, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(folding_net, str(path))
    _failing_sessions(monkeypatch, MemoryError())
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0]


def test_memory_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("std::bad_alloc"))
    wrapped = ValueError("wrapped")
    wrapped.__cause__ = MemoryError()
    assert is_out_of_memory(wrapped)
    assert not is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 1 : FAIL : shape mismatch"))


def test_checker_out_of_memory_is_not_a_bad_model(net, monkeypatch):
    def refuse(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(OutOfMemoryError, match="out of memory while checking"):
        build_graph(net)


# --------------------------------------------------------------------------- compiled → engine


def _dynamic_length(onnx_zoo) -> onnx.ModelProto:
    _, proto = onnx_zoo.get("cnn1d", dynamo=False)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "length"
    return model


def test_engine_fallback_is_noted_once(onnx_zoo):
    model = _dynamic_length(onnx_zoo)
    x = onnx_zoo.example("cnn1d", batch=2, seed=0).numpy()
    explainer = Explainer(model, method="gradient")
    layer = explainer.graph.nodes[0].outputs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer.explain(x)
        explainer.explain(x[:1])
        explainer.explain(x, layer=layer)
        explainer.sub_explainer("tsgb").explain(x)  # another method on the same model
    notes = [w for w in caught if issubclass(w.category, EngineFallbackWarning)]
    assert len(notes) == 1, [str(w.message) for w in notes]
    message = str(notes[0].message)
    assert "dynamic size on axis 2" in message and "NumPy engine" in message
    assert "\n" not in message


def test_no_note_when_compiled(onnx_zoo):
    _, proto = onnx_zoo.get("cnn1d", dynamo=False)
    x = onnx_zoo.example("cnn1d", batch=2, seed=0).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        explainer = Explainer(proto, method="gradient")
        explainer.explain(x)
    assert explainer._compiled[(None, ())] is not None


def test_compile_out_of_memory_is_not_a_fallback(onnx_zoo, monkeypatch):
    """A memory failure while building the compiled explainer surfaces as one."""
    _, proto = onnx_zoo.get("cnn1d", dynamo=False)
    x = onnx_zoo.example("cnn1d", batch=2, seed=0).numpy()
    explainer = Explainer(proto, method="gradient")
    _failing_sessions(
        monkeypatch, RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        with pytest.raises(OutOfMemoryError, match="out of memory while"):
            explainer.explain(x)


def test_opset_upgrade_out_of_memory_is_not_a_fallback(onnx_zoo, x2, monkeypatch):
    """The compiled explainer of an opset-13 model with MaxPool needs opset 16; a memory
    failure in ONNX's version converter used to become a ModelError, i.e. a silent switch
    to the engine."""
    from tsgb_onnx.io.export import from_torch

    old = from_torch(onnx_zoo.torch_model(NET), onnx_zoo.example(NET), opset=13)
    explainer = Explainer(old, method="gradient")

    def refuse(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(OutOfMemoryError, match="upgrading the model to opset 16"):
        explainer.explain(x2)


def test_unreadable_layout_metadata_is_noted_once(net, x2):
    """A broken 'tsgb.preprocess' entry used to be ignored without a word."""
    model = onnx.ModelProto()
    model.CopyFrom(net)
    props = [p for p in model.metadata_props if p.key != "tsgb.preprocess"]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.append(onnx.StringStringEntryProto(key="tsgb.preprocess", value="{nchw"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for backend in ("auto", "numpy"):
            explainer = Explainer(model, method="gradient", backend=backend)
            explainer.explain(x2)
            explainer.explain(x2[:1])
    notes = [w for w in caught if issubclass(w.category, MetadataWarning)]
    assert len(notes) == 2, [str(w.message) for w in notes]  # once per model loaded
    assert "'tsgb.preprocess'" in str(notes[0].message) and "ignored" in str(notes[0].message)


def test_failed_diagnosis_still_reports_the_nan(overflow_net, x2, monkeypatch):
    """If the diagnosis itself cannot run, the non-finite result is still the error."""
    model, first = overflow_net
    explainer = Explainer(model, method="gradient", backend="numpy")
    with pytest.raises(NonFiniteError, match=first):
        explainer.explain(x2)  # the explainer's own sessions now exist
    _failing_sessions(monkeypatch, RuntimeError("[ONNXRuntimeError] : 1 : FAIL : no session"))
    with pytest.raises(NonFiniteError) as info:
        explainer.explain(x2)
    message = str(info.value)
    assert message.startswith("NaN in the logits (row 0)") and "no session" in message
