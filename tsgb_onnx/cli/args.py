"""What every `tsgb` command shares: the parser class, argument types, method flags and
options, output-path checks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import InputError
from tsgb_onnx.io.preprocess import load_rgb
from tsgb_onnx.methods.table import available_methods


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"tsgb: error: {message} (see `{self.prog} --help`)\n")


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'"
        ) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def size(text: str) -> int | tuple[int, int]:
    """--size: one positive integer, or HEIGHT,WIDTH."""
    values = [positive_int(v) for v in text.split(",")]
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got '{text}'")


def box(text: str) -> tuple[int, ...]:
    """--target-box: y0,x0,y1,x1 in output positions (ends excluded; a 1-D output: t0,t1)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (2, 4) or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected y0,x0,y1,x1 (non-negative integers, output positions), got '{text}'"
        )
    return values


def load_mask(text: str) -> np.ndarray:
    """--target-mask: a .png (its non-black pixels are inside) or a .npy array of weights,
    at the output's position size; InputError when it cannot be read."""
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise InputError(f"--target-mask must be a .png or .npy file, got '{text}'")
    if not path.is_file():
        raise InputError(f"--target-mask '{text}' does not exist")
    if suffix == ".png":
        return load_rgb(path).any(axis=-1)
    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--target-mask '{text}' cannot be read as .npy: {exc}") from None
    if mask.dtype.kind not in "biuf":
        raise InputError(f"--target-mask '{text}' holds {mask.dtype} values, not numbers")
    return mask


def check_out(out: str | None) -> Path | None:
    """Validate --out before any work is done."""
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() not in (".npy", ".png"):
        raise InputError(f"--out must end in .npy or .png, got '{out}'")
    if not path.parent.exists():
        raise InputError(f"--out folder '{path.parent}' does not exist")
    return path


def out_path(text: str | None, suffixes: tuple[str, ...], flag: str) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} must end in {' or '.join(suffixes)}, got '{text}'")
    if not path.parent.exists():
        raise InputError(f"{flag} folder '{path.parent}' does not exist")
    return path


def option_value(text: str):
    """`--opt` values: int, float, true/false, none, or a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_options(args: argparse.Namespace) -> dict:
    """--opt KEY=VALUE, --alpha, --reference-compat as method options."""
    options = {}
    for item in getattr(args, "opt", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--opt expects KEY=VALUE, got '{item}'")
        options[key.strip().replace("-", "_")] = option_value(value.strip())
    if args.alpha is not None:
        options["alpha"] = args.alpha
    if args.reference_compat:
        options["reference_compat"] = True
    return options


def add_method_flags(sp: argparse.ArgumentParser) -> None:
    """--method, --alpha, --reference-compat, --output, --layer, --opt."""
    sp.add_argument(
        "--method",
        default="tsgb",
        help=f"explanation method ({', '.join(available_methods())}); default tsgb",
    )
    sp.add_argument("--alpha", type=float, default=None, help="TSGB-FC scale coefficient (eq. 2)")
    sp.add_argument(
        "--reference-compat",
        action="store_true",
        help="TSGB: reproduce the reference code's variants",
    )
    sp.add_argument("--output", default=None, help="model output holding the logits")
    sp.add_argument("--layer", default=None, help="tensor to explain at (default: model input)")
    sp.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option (repeatable), e.g. --opt groups=16",
    )


def add_engine_flags(sp: argparse.ArgumentParser) -> None:
    """--engine, --address, --workers (the Ray scale-out of explain and evaluate)."""
    sp.add_argument(
        "--engine",
        choices=("in-process", "ray"),
        default="in-process",
        help="in-process (default), or ray: Ray Data over a local Ray or a cluster, results "
        "as Parquet in --out-dir, resumable (needs the [ray] extra; docs/scale.md)",
    )
    sp.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="--engine ray: join the Ray cluster at ADDR ('auto': one started on this "
        "machine; default: RAY_ADDRESS, else a local Ray started for the run)",
    )
    sp.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="--engine ray: explainer actors (default: one per CPU of the cluster)",
    )
