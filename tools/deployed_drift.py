"""Explanation drift of deployed EfficientNet-Lite0 variants against the float32 model.

    python tools/deployed_drift.py [--methods tsgb,gradient,gradcam] [--out DIR]

Builds, from the pretrained float32 export: a float16 model (onnxconverter-common), a static
QDQ INT8 model (onnxruntime.quantization.quantize_static, calibrated on the bundled photos)
and a dynamically quantized one (quantize_dynamic, int8 weights). On the bundled hand-boxed
photos (`skimage` data set) it explains each model's prediction of the float model's top-1
class and prints, per deployed model, the top-1 agreement with the float model and the
Spearman rank correlation between each method's map and the float model's map (mean and
minimum over the photos).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tsgb_onnx import Explainer
from tsgb_onnx.evaluation.datasets import load_dataset
from tsgb_onnx.evaluation.metrics import spearman
from tsgb_onnx.io.photos import cache_dir, lite0_onnx


def deployed_variants(source: Path, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """float16, QDQ static INT8 and dynamic INT8 versions of `source` (built once)."""
    from onnxconverter_common import float16
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"lite0_{name}.onnx" for name in ("float16", "qdq_int8", "dynamic")}
    prepared = folder / "lite0_prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(source), str(prepared))
    if not paths["float16"].exists():
        half = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=False)
        onnx.save(half, str(paths["float16"]))

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"input": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.rows, None)

    if not paths["qdq_int8"].exists():
        quantize_static(
            str(prepared),
            str(paths["qdq_int8"]),
            Photos(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    if not paths["dynamic"].exists():
        quantize_dynamic(str(prepared), str(paths["dynamic"]), weight_type=QuantType.QInt8)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tsgb,gradient,gradcam")
    parser.add_argument(
        "--out", default=str(cache_dir() / "deployed"), help="folder for the deployed models"
    )
    args = parser.parse_args()
    methods = args.methods.split(",")
    data = load_dataset("skimage")
    x = data.x.astype(np.float32)
    source = lite0_onnx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = deployed_variants(source, x, Path(args.out))
        reference = {m: Explainer(str(source), method=m).explain(x) for m in methods}
        target = reference[methods[0]].target
        rows = []
        for name, path in variants.items():
            start = time.perf_counter()
            row = {"model": name}
            for m in methods:
                got = Explainer(str(path), method=m).explain(x, target=target)
                rho = [spearman(got.saliency[i], reference[m].saliency[i]) for i in range(len(x))]
                row[m] = (float(np.mean(rho)), float(np.min(rho)))
                row["top1"] = float(np.mean(got.logits.argmax(1) == target))
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
    print(
        f"EfficientNet-Lite0, {len(x)} bundled photos ({', '.join(data.names)}); maps of the "
        "float32 model's top-1 class; Spearman vs the float32 map: mean (min)\n"
    )
    print("| deployed model | top-1 agreement | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for row in rows:
        cells = " | ".join(f"{row[m][0]:.3f} ({row[m][1]:.3f})" for m in methods)
        print(f"| {row['model']} | {row['top1']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
