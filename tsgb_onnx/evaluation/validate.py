"""Deployment validation: evaluate a model against thresholds; JSON, JUnit XML and HTML reports.

`validate(config)` takes a TOML file (or the same structure as a dict; format in
docs/evaluation.md), runs `tsgb_onnx.evaluate.evaluate` and checks every threshold for every
method. The CLI (`tsgb validate CONFIG.toml`) exits 0 when every check passes, 1 when one
fails, 2 when the validation could not run (missing file, malformed config, a method that
cannot explain the model).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import InputError
from tsgb_onnx.evaluation.datasets import Dataset
from tsgb_onnx.evaluation.drift import Drift, explanation_drift
from tsgb_onnx.evaluation.evaluate import METRICS, Evaluation, Settings, evaluate
from tsgb_onnx.io.atomic import write_bytes_atomic, write_text_atomic

# threshold key -> (metric that computes it, direction of "better")
CHECKS = {
    "pointing": ("pointing", "higher"),
    "loc_error": ("localization", "lower"),
    "deletion": ("deletion", "lower"),
    "insertion": ("insertion", "higher"),
    "class_sensitivity": ("class_sensitivity", "lower"),
    "sanity_cascading": ("sanity", "lower"),
    "sanity_independent": ("sanity", "lower"),
    "images_per_s": (None, "higher"),
    "nan_maps": (None, "lower"),
}
SETTINGS_KEYS = {
    "batch_size",
    "predict_batch",
    "step",
    "score",
    "tolerance",
    "component",
    "sanity_samples",
    "seed",
    "backend",
    "sanity_layers",
    "memory_budget",
}


class ConfigError(InputError):
    """The validation config is missing, malformed or inconsistent."""


# the tables a config may have and the keys each may hold (thresholds and options: checked
# by their own parsers, which know the metric and method names)
TABLE_KEYS = {
    "model": {"path", "output"},
    "data": {"path"},
    "evaluation": {"methods", "metrics"} | SETTINGS_KEYS,
    "options": None,
    "thresholds": None,
    "output": {"dir", "worst"},
    "drift": {
        "reference",
        "method",
        "top_fraction",
        "min_spearman",
        "min_image_spearman",
        "min_overlap",
        "min_top1_agreement",
    },
}
# [drift] bound -> (Drift attribute it bounds, what is checked)
DRIFT_BOUNDS = {
    "min_spearman": ("spearman", "mean Spearman of the deployed and the reference maps"),
    "min_image_spearman": ("spearman", "every image's Spearman"),
    "min_overlap": ("overlap", "mean share of the reference's top pixels kept"),
    "min_top1_agreement": ("top1_agrees", "share of images with the same top-1 class"),
}


def _fraction(v) -> bool:
    return _number(v) and 0 < v <= 1


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# key -> (is the value valid?, what the key takes)
VALUE_CHECKS = {
    ("model", "path"): (lambda v: isinstance(v, str) and v != "", "a file path (a string)"),
    ("model", "output"): (lambda v: isinstance(v, str) and v != "", "an output name (a string)"),
    ("data", "path"): (
        lambda v: isinstance(v, str) and v != "",
        "a manifest, a folder, 'synthetic[:N[:SEED]]' or 'skimage' (a string)",
    ),
    ("evaluation", "batch_size"): (_positive_int, "a positive integer"),
    ("evaluation", "predict_batch"): (_positive_int, "a positive integer"),
    ("evaluation", "sanity_samples"): (_positive_int, "a positive integer"),
    ("evaluation", "step"): (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("evaluation", "score"): (lambda v: v in ("softmax", "sigmoid"), '"softmax" or "sigmoid"'),
    ("evaluation", "tolerance"): (lambda v: _number(v) and v >= 0, "a number of pixels, >= 0"),
    ("evaluation", "component"): (lambda v: v in ("largest", "all"), '"largest" or "all"'),
    ("evaluation", "seed"): (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "a non-negative integer",
    ),
    ("evaluation", "backend"): (
        lambda v: v in ("auto", "compiled", "numpy"),
        '"auto", "compiled" or "numpy"',
    ),
    ("output", "dir"): (lambda v: isinstance(v, str) and v != "", "a folder path (a string)"),
    ("output", "worst"): (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "a non-negative integer (worst cases shown per method)",
    ),
    ("drift", "reference"): (
        lambda v: isinstance(v, str) and v != "",
        "the float reference model's path (a string)",
    ),
    ("drift", "method"): (lambda v: isinstance(v, str) and v != "", "a method name"),
    ("drift", "top_fraction"): (_fraction, "a number in (0, 1]"),
    ("drift", "min_spearman"): (lambda v: _number(v) and -1 <= v <= 1, "a number in [-1, 1]"),
    ("drift", "min_image_spearman"): (
        lambda v: _number(v) and -1 <= v <= 1,
        "a number in [-1, 1]",
    ),
    ("drift", "min_overlap"): (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("drift", "min_top1_agreement"): (
        lambda v: _number(v) and 0 <= v <= 1,
        "a number in [0, 1]",
    ),
}


def check_config(cfg: dict, where: str = "config") -> None:
    """Refuse, before anything runs or is written, a config with an unknown table or key or
    a value of the wrong kind: one line naming the file (`where`), the table and the key."""
    unknown = sorted(set(cfg) - set(TABLE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown table [{unknown[0]}]; known: "
            + ", ".join(f"[{t}]" for t in TABLE_KEYS)
        )
    for table, keys in TABLE_KEYS.items():
        value = cfg.get(table)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{table}] must be a table, got {value!r}")
        for key in sorted(value):
            if keys is not None and key not in keys:
                raise ConfigError(
                    f"{where}: [{table}] has unknown key '{key}'; known: {', '.join(sorted(keys))}"
                )
            check = VALUE_CHECKS.get((table, key))
            if check is not None and not check[0](value[key]):
                raise ConfigError(
                    f"{where}: [{table}] {key} must be {check[1]}, got {value[key]!r}"
                )
    for method, opts in (cfg.get("options") or {}).items():
        if not isinstance(opts, dict):
            raise ConfigError(
                f"{where}: [options] {method} must be a table of that method's options "
                f"([options.{method}]), got {opts!r}"
            )


def _check_options(options: dict, methods: list[str], where: str) -> None:
    """[options.NAME] must name a method the config evaluates (a typo would be ignored), with
    options that method has."""
    from tsgb_onnx.errors import MethodError
    from tsgb_onnx.methods.table import get_method

    for name, opts in options.items():
        if name not in methods:
            raise ConfigError(
                f"{where}: [options.{name}] names no evaluated method; [evaluation] methods "
                f"are {', '.join(methods)}"
            )
        try:
            get_method(name).resolve_options(opts)
        except (MethodError, TypeError, ValueError) as exc:  # MethodError: a ValueError
            raise ConfigError(f"{where}: [options.{name}] {exc}") from None


@dataclass
class Check:
    name: str  # "<method>.<metric>"
    method: str
    metric: str
    value: float | None
    bound: str  # "min" or "max"
    threshold: float
    passed: bool

    @property
    def message(self) -> str:
        op = ">=" if self.bound == "min" else "<="
        shown = "not computed" if self.value is None else f"{self.value:.6g}"
        return f"{self.name} = {shown}, required {op} {self.threshold:g}"


@dataclass
class ValidationReport:
    checks: list[Check]
    evaluation: Evaluation
    files: dict = field(default_factory=dict)
    drift: Drift | None = None
    drift_failing: list[str] = field(default_factory=list)  # images under min_image_spearman

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checks": [
                {
                    "name": c.name,
                    "method": c.method,
                    "metric": c.metric,
                    "value": c.value,
                    "bound": c.bound,
                    "threshold": c.threshold,
                    "passed": c.passed,
                }
                for c in self.checks
            ],
            "evaluation": self.evaluation.to_dict(),
            "drift": None
            if self.drift is None
            else {
                **self.drift.summary(),
                "failing_images": self.drift_failing,
                "per_image": [
                    {"image": n, "spearman": float(r), "overlap": float(o), "top1_agrees": bool(a)}
                    for n, r, o, a in zip(
                        self.drift.names,
                        self.drift.spearman,
                        self.drift.overlap,
                        self.drift.top1_agrees,
                    )
                ],
            },
            "files": self.files,
        }


# --------------------------------------------------------------------------- config
def load_config(config) -> tuple[dict, Path]:
    """(config dict, folder that relative paths refer to)."""
    if isinstance(config, dict):
        return config, Path.cwd()
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    import tomllib

    try:
        return tomllib.loads(path.read_text()), path.parent
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config '{path}' is not valid TOML: {exc}") from None


def _table(cfg: dict, key: str, required: bool = False) -> dict:
    value = cfg.get(key, {} if not required else None)
    if value is None:
        raise ConfigError(f"config has no [{key}] table")
    if not isinstance(value, dict):
        raise ConfigError(f"config [{key}] must be a table, got {type(value).__name__}")
    return value


def _threshold(key: str, spec, where: str) -> tuple[str, float]:
    if key not in CHECKS:
        raise ConfigError(f"{where}: unknown threshold '{key}'; known: {', '.join(CHECKS)}")
    if isinstance(spec, bool) or not isinstance(spec, (int, float, dict)):
        raise ConfigError(f"{where}.{key}: give a number or {{ min = ... }} / {{ max = ... }}")
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in ("min", "max"):
            raise ConfigError(f"{where}.{key}: give exactly one of min or max, got {spec}")
        bound, value = next(iter(spec.items()))
    else:
        bound, value = ("min" if CHECKS[key][1] == "higher" else "max"), spec
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{key}: threshold must be a number, got {value!r}")
    return bound, float(value)


def parse_thresholds(table: dict, methods: list[str]) -> dict:
    """{method: {metric: (bound, value)}}; method-named sub-tables override the global ones."""
    common, per_method = {}, {}
    for key, spec in table.items():
        if key in methods and isinstance(spec, dict) and not set(spec) <= {"min", "max"}:
            per_method[key] = {k: _threshold(k, v, f"[thresholds.{key}]") for k, v in spec.items()}
        else:
            common[key] = _threshold(key, spec, "[thresholds]")
    common.setdefault("nan_maps", ("max", 0.0))  # no NaN, always
    return {m: {**common, **per_method.get(m, {})} for m in methods}


def _resolve(base: Path, text: str) -> str:
    if text in ("skimage",) or text.startswith("synthetic"):
        return text
    path = Path(text)
    return str(path if path.is_absolute() else base / path)


# --------------------------------------------------------------------------- run
def validate(config, out_dir: str | Path | None = None, progress: bool = False) -> ValidationReport:
    """Run the validation a config describes; write report.json, junit.xml and report.html.

    Raises a `TsgbError` when it cannot run (the CLI's exit code 2).
    """
    from tsgb_onnx.evaluation.evaluate import parse_methods, parse_metrics

    cfg, base = load_config(config)
    where = "config" if isinstance(config, dict) else f"config '{config}'"
    check_config(cfg, where)
    model_t, data_t = _table(cfg, "model", True), _table(cfg, "data", True)
    ev_t, out_t = _table(cfg, "evaluation"), _table(cfg, "output")
    if not isinstance(model_t.get("path"), str):
        raise ConfigError('config [model] needs path = "MODEL.onnx"')
    if not isinstance(data_t.get("path"), str):
        raise ConfigError(
            "config [data] needs path = \"manifest.json\" (or a folder, 'synthetic', 'skimage')"
        )
    model = _resolve(base, model_t["path"])
    if not Path(model).is_file():
        raise ConfigError(f"model file '{model}' (config [model] path) does not exist")
    methods = parse_methods(ev_t.get("methods", ["tsgb"]))
    try:
        thresholds = parse_thresholds(_table(cfg, "thresholds"), methods)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    needed = {CHECKS[k][0] for t in thresholds.values() for k in t if CHECKS[k][0]}
    metrics = (
        parse_metrics(ev_t["metrics"])
        if "metrics" in ev_t
        else tuple(m for m in METRICS if m in needed)
    )
    missing = sorted(needed - set(metrics))
    if missing:
        raise ConfigError(
            f"thresholds need metric(s) {', '.join(missing)} that [evaluation] metrics leaves out"
        )
    settings = Settings(
        progress=progress,
        keep_worst=int(out_t.get("worst", 4)),
        **{k: ev_t[k] for k in SETTINGS_KEYS if k in ev_t},
    )
    options = _table(cfg, "options")
    _check_options(options, methods, where)
    evaluation = evaluate(
        model,
        _resolve(base, data_t["path"]),
        methods,
        metrics,
        options,
        settings,
        output=model_t.get("output"),
        strict=True,
    )
    checks = _checks(evaluation, thresholds)
    drift, failing = None, []
    if "drift" in cfg:
        drift, drift_checks, failing = _drift(cfg["drift"], base, model, evaluation, where)
        checks += drift_checks
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path(_resolve(base, out_t.get("dir", "validation")))
    )
    out.mkdir(parents=True, exist_ok=True)
    report = ValidationReport(checks, evaluation, drift=drift, drift_failing=failing)
    report.files = {
        "json": str(out / "report.json"),
        "junit": str(out / "junit.xml"),
        "html": str(out / "report.html"),
    }
    write_text_atomic(report.files["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    write_junit(report, report.files["junit"])
    write_html(report, report.files["html"], worst=int(out_t.get("worst", 4)))
    return report


def _drift(
    table: dict, base: Path, deployed: str, evaluation: Evaluation, where: str
) -> tuple[Drift, list[Check], list[str]]:
    """The [drift] check: the deployed model ([model] path) against `reference`."""
    if "reference" not in table:
        raise ConfigError(f'{where}: [drift] needs reference = "FLOAT_MODEL.onnx"')
    reference = _resolve(base, table["reference"])
    if not Path(reference).is_file():
        raise ConfigError(f"reference model '{reference}' ([drift] reference) does not exist")
    method = table.get("method", "tsgb")
    from tsgb_onnx.methods.table import get_method

    get_method(method)  # an unknown name: one line before any work
    data = evaluation.dataset
    if not isinstance(data, Dataset):  # streamed by evaluate: drift compares whole sets
        data = evaluation.dataset = data.materialize()
    drift = explanation_drift(
        deployed,
        reference,
        data.x,
        method=method,
        names=data.names,
        top_fraction=float(table.get("top_fraction", 0.1)),
    )
    checks, failing = [], []
    for key, (attribute, _) in DRIFT_BOUNDS.items():
        if key not in table:
            continue
        limit = float(table[key])
        values = np.asarray(getattr(drift, attribute), dtype=np.float64)
        if key == "min_image_spearman":
            failing = [n for n, v in zip(drift.names, values) if not v >= limit]
            value = float(values.min())
        else:
            value = float(values.mean())
        name = f"drift.{method}.{key.removeprefix('min_')}"
        checks.append(
            Check(
                name,
                "drift",
                key.removeprefix("min_"),
                value,
                "min",
                limit,
                math.isfinite(value) and value >= limit,
            )
        )
    return drift, checks, failing


def _checks(evaluation: Evaluation, thresholds: dict) -> list[Check]:
    checks = []
    for result in evaluation.results:
        for metric, (bound, limit) in thresholds[result.method].items():
            value = result.values.get(metric)
            value = None if value is None else float(value)
            ok = (
                value is not None
                and math.isfinite(value)
                and (value >= limit if bound == "min" else value <= limit)
            )
            checks.append(
                Check(f"{result.method}.{metric}", result.method, metric, value, bound, limit, ok)
            )
    return checks


# --------------------------------------------------------------------------- reports
def write_junit(report: ValidationReport, path: str | Path) -> None:
    """JUnit XML: one testcase per check, failures carry the measured value and threshold."""
    failures = sum(not c.passed for c in report.checks)
    suite = ET.Element(
        "testsuite",
        name="tsgb.validate",
        tests=str(len(report.checks)),
        failures=str(failures),
        errors="0",
    )
    for c in report.checks:
        case = ET.SubElement(suite, "testcase", classname=f"tsgb.validate.{c.method}", name=c.name)
        if not c.passed:
            message = c.message
            if c.metric == "image_spearman" and report.drift_failing:
                message += "; images under it: " + ", ".join(report.drift_failing)
            fail = ET.SubElement(case, "failure", message=message, type="threshold")
            fail.text = message
    root = ET.Element("testsuites", tests=str(len(report.checks)), failures=str(failures))
    root.append(suite)
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    write_bytes_atomic(path, buffer.getvalue())


def _png_b64(rgb: np.ndarray, scale: int) -> str:
    from PIL import Image

    im = Image.fromarray(rgb)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _draw_boxes(rgb: np.ndarray, boxes) -> np.ndarray:
    out = rgb.copy()
    for x0, y0, x1, y1 in boxes:
        out[y0:y1, [x0, x1 - 1]] = (255, 255, 255)
        out[[y0, y1 - 1], x0:x1] = (255, 255, 255)
    return out


def write_html(report: ValidationReport, path: str | Path, worst: int = 4) -> None:
    """An HTML page: the checks, the table, and the maps of the worst cases per method."""
    from tsgb_onnx.io.render import heatmap

    ev = report.evaluation
    s = ev.samples
    rows = "".join(
        f"<tr class={'pass' if c.passed else 'fail'}><td>{html.escape(c.name)}</td>"
        f"<td>{'pass' if c.passed else 'FAIL'}</td><td>{html.escape(c.message)}</td></tr>"
        for c in report.checks
    )
    parts = [
        "<!doctype html><meta charset=utf-8><title>tsgb validate</title><style>",
        "body{font-family:sans-serif}td,th{padding:2px 8px}.fail{color:#b00}"
        ".pass{color:#070}figure{display:inline-block;margin:4px}figcaption{font-size:12px}"
        ".results{border-collapse:collapse}.results td,.results th{border-bottom:1px solid #ccc}"
        ".num{text-align:right}",
        "</style>",
        f"<h1>tsgb validate: {'PASSED' if report.passed else 'FAILED'}</h1>",
        f"<p>model {html.escape(ev.model)}, data {html.escape(ev.data)}, "
        f"{ev.images} images, {len(s.target)} explained objects</p>",
        "<table><tr><th>check</th><th>result</th><th>detail</th></tr>",
        rows,
        "</table>",
        "<h2>Results</h2>",
        ev.html(),
    ]
    for result in ev.results:
        if not result.worst:
            continue
        parts.append(f"<h2>{html.escape(result.method)}: worst cases</h2>")
        for case in result.worst[:worst]:
            i, rgb = case.sample, case.rgb
            scale = max(1, 192 // max(rgb.shape[:2]))
            overlay = _draw_boxes(heatmap(np.nan_to_num(case.saliency), rgb), s.boxes[i])
            caption = f"{case.name}, {s.label[i]} (class {s.target[i]})"
            for key, name in (("deletion_auc", "deletion"), ("insertion_auc", "insertion")):
                if key in result.details:
                    caption += f", {name} {result.details[key][i]:.3f}"
            hit = result.details.get("pointing_hits", [None] * (i + 1))[i]
            if hit is not None:
                caption += ", pointing " + ("hit" if hit else "miss")
            parts.append(
                f"<figure><img src='data:image/png;base64,{_png_b64(rgb, scale)}'>"
                f"<img src='data:image/png;base64,{_png_b64(overlay, scale)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if report.drift is not None:
        parts.append(_drift_html(report, worst))
    write_text_atomic(path, "\n".join(parts) + "\n")


def _drift_html(report: ValidationReport, worst: int) -> str:
    """The drift summary and the worst images: photo, reference map, deployed map."""
    from tsgb_onnx.io.render import heatmap

    drift, data = report.drift, report.evaluation.dataset
    summary = drift.summary()
    parts = [
        f"<h2>Explanation drift ({html.escape(drift.method)}): deployed vs reference</h2>",
        f"<p>Spearman mean {summary['spearman_mean']:.3f} (min {summary['spearman_min']:.3f}),"
        f" top-{summary['top_fraction']:.0%} pixel overlap {summary['overlap_mean']:.3f},"
        f" top-1 agreement {summary['top1_agreement']:.3f}</p>",
    ]
    for i in drift.worst(worst):
        rgb = data.rgb[i]
        scale = max(1, 192 // max(rgb.shape[:2]))
        caption = (
            f"{data.names[i]}: Spearman {drift.spearman[i]:.3f}, overlap "
            f"{drift.overlap[i]:.3f}, top-1 {'agrees' if drift.top1_agrees[i] else 'differs'}"
        )
        images = "".join(
            f"<img title='{title}' src='data:image/png;base64,"
            f"{_png_b64(heatmap(np.nan_to_num(m), rgb), scale)}'>"
            for title, m in (
                ("reference", drift.reference_maps[i]),
                ("deployed", drift.deployed_maps[i]),
            )
        )
        parts.append(
            f"<figure><img src='data:image/png;base64,{_png_b64(rgb, scale)}'>{images}"
            f"<figcaption>{html.escape(caption)} (photo | reference | deployed)"
            "</figcaption></figure>"
        )
    return "\n".join(parts)
