"""Class labels: from model metadata, a text file, or the built-in ImageNet names."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tsgb_onnx.errors import InputError, TargetError

LABELS_KEY = "tsgb.labels"  # ONNX metadata_props key: a JSON list of class names
BUILTIN = ("imagenet",)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order."""
    text = resources.files("tsgb_onnx").joinpath("data/imagenet_labels.txt").read_text("utf-8")
    return _parse_lines(text)


def _parse_lines(text: str) -> list[str]:
    """One name per line; blank lines and lines starting with '#' are skipped."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def load_labels(spec: str) -> list[str]:
    """`spec` is 'imagenet' or a file: one name per line, or a JSON list / {index: name} map."""
    if spec.lower() in BUILTIN:
        return imagenet_labels()
    path = Path(spec)
    if not path.is_file():
        raise InputError(
            f"--labels file '{spec}' does not exist (give a file with one class "
            "name per line, or 'imagenet')"
        )
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--labels file '{spec}' cannot be read as UTF-8 text: {exc}") from None
    if path.suffix.lower() == ".json":
        return _from_json(text, f"--labels file '{spec}'")
    names = _parse_lines(text)
    if not names:
        raise InputError(f"--labels file '{spec}' holds no class names")
    return names


def _from_json(text: str, where: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc}") from None
    if isinstance(data, dict):  # {"0": "cat", "1": "dog"} (Keras / Hugging Face id2label style)
        try:
            pairs = sorted((int(k), str(v)) for k, v in data.items())
        except ValueError:
            raise InputError(f"{where}: a JSON object of labels needs integer keys") from None
        if [k for k, _ in pairs] != list(range(len(pairs))):
            raise InputError(f"{where}: label indices must be 0..{len(pairs) - 1} without gaps")
        return [v for _, v in pairs]
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        return list(data)
    raise InputError(f"{where}: expected a JSON list of names or an {{index: name}} object")


def labels_from_metadata(props: dict[str, str]) -> list[str] | None:
    """Labels stored in a model's metadata_props, or None."""
    text = props.get(LABELS_KEY)
    if not text:
        return None
    return _from_json(text, f"model metadata '{LABELS_KEY}'")


def check_count(labels: Sequence[str], classes: int | None, where: str) -> None:
    if classes is not None and len(labels) != classes:
        raise InputError(
            f"{where} has {len(labels)} class names but the model has {classes} "
            "classes: give a matching --labels file"
        )


def label_index(name: str, labels: Sequence[str] | None) -> int:
    """Index of class `name` (exact, then case-insensitive); TargetError with close matches."""
    if not labels:
        raise TargetError(
            f"--target '{name}' is not a class index and the model has no class "
            "labels: give --labels FILE (or --labels imagenet)"
        )
    if name in labels:
        return list(labels).index(name)
    folded = [v.casefold() for v in labels]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    close = difflib.get_close_matches(name.casefold(), folded, n=3, cutoff=0.6)
    close += [v for v in folded if name.casefold() in v and v not in close][: 3 - len(close)]
    hint = (
        "; did you mean " + ", ".join(f"'{labels[folded.index(c)]}'" for c in close) + "?"
        if close
        else ""
    )
    raise TargetError(f"--target '{name}' is not a class name of the model{hint}")


def parse_targets(text: str, labels: Sequence[str] | None):
    """`--target` text → None (top-1), one index, or one index per input.

    Accepts 'top1', an index, a class name, or a comma list of indices / names; a whole text
    that is itself a class name wins over splitting at commas.
    """
    text = text.strip()
    if text in ("top1", "top-1", ""):
        return None
    if labels and (text in labels or text.casefold() in (v.casefold() for v in labels)):
        return label_index(text, labels)
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            values.append(int(part))
        except ValueError:
            if not labels:
                raise TargetError(
                    f"--target must be 'top1', a class index, a class name or a comma list, "
                    f"got '{text}' (class names need labels: --labels FILE or imagenet)"
                ) from None
            values.append(label_index(part, labels))
    return values[0] if len(values) == 1 else values


def label_of(index: int, labels: Sequence[str] | None) -> str | None:
    return labels[index] if labels and 0 <= index < len(labels) else None
