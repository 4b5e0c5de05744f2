"""Exporters: framework model → ONNX with a dynamic batch dimension."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from typing import Any

import onnx

from .errors import TsgbError


def _torch():
    try:
        import torch
    except ImportError:
        raise TsgbError("exporting a PyTorch model needs PyTorch: pip install 'tsgb-onnx[torch]'") \
            from None
    return torch


@contextlib.contextmanager
def _quiet():
    """Silence exporter warnings, log records and prints."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def from_torch(module: Any, example: Any, path: str | os.PathLike | None = None,
               dynamo: bool = False, opset: int | None = None) -> onnx.ModelProto:
    """Export a PyTorch module (eval mode) to ONNX: input "input", output "logits", dynamic batch.

    `dynamo=False` uses the TorchScript exporter (opset 17 by default), `dynamo=True` the
    torch.export-based one (opset 18). Writes `path` when given; returns the ModelProto.
    """
    torch = _torch()
    module = module.eval()
    example = example.detach()
    with tempfile.TemporaryDirectory(prefix="tsgb_export_") as tmp, _quiet(), torch.no_grad():
        target = os.path.join(tmp, "model.onnx")
        if dynamo:
            if example.shape[0] < 2:  # torch.export specialises a batch of 1
                example = example.expand(2, *example.shape[1:]).contiguous()
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                module, (example,), input_names=["input"], output_names=["logits"],
                opset_version=opset or 18, dynamo=True, dynamic_shapes=({0: batch},),
                external_data=False, optimize=True, verbose=False)
            program.save(target, external_data=False)
        else:
            torch.onnx.export(
                module, (example,), target, input_names=["input"], output_names=["logits"],
                opset_version=opset or 17, dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(target, load_external_data=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
