"""Explanation drift: a deployed model (float16, INT8) against its float reference.

Per image: the Spearman rank correlation of the two maps, the overlap of their top pixels
(the share of the reference map's top `top_fraction` pixels that are also among the deployed
map's), and whether the two models agree on the top-1 class. Both maps explain the reference
model's top-1 class, so a disagreement on the class does not also change what is explained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tsgb_onnx.errors import InputError
from tsgb_onnx.evaluation.metrics import spearman
from tsgb_onnx.explainer import Explainer
from tsgb_onnx.ir.graph import ModelLike


@dataclass
class Drift:
    """Per-image drift of `method`'s maps, deployed vs reference."""

    method: str
    names: list[str]
    spearman: np.ndarray  # [N]
    overlap: np.ndarray  # [N] share of the reference's top pixels kept
    top1_agrees: np.ndarray  # [N] bool
    top_fraction: float
    deployed_maps: np.ndarray  # [N, *spatial]
    reference_maps: np.ndarray

    def summary(self) -> dict:
        return {
            "method": self.method,
            "images": len(self.names),
            "spearman_mean": float(self.spearman.mean()),
            "spearman_min": float(self.spearman.min()),
            "overlap_mean": float(self.overlap.mean()),
            "top_fraction": self.top_fraction,
            "top1_agreement": float(self.top1_agrees.mean()),
        }

    def worst(self, count: int) -> list[int]:
        """Indices of the `count` images whose maps drift most (lowest Spearman)."""
        return [int(i) for i in np.argsort(self.spearman, kind="stable")[:count]]


def top_overlap(deployed: np.ndarray, reference: np.ndarray, fraction: float) -> float:
    """The share of `reference`'s top `fraction` pixels that are also in `deployed`'s."""
    k = max(1, int(round(fraction * reference.size)))
    top_ref = np.argpartition(reference.ravel(), -k)[-k:]
    top_dep = np.argpartition(deployed.ravel(), -k)[-k:]
    return len(np.intersect1d(top_ref, top_dep)) / k


def explanation_drift(
    deployed: ModelLike,
    reference: ModelLike,
    x: np.ndarray,
    method: str = "tsgb",
    names: Sequence[str] | None = None,
    top_fraction: float = 0.1,
    batch_size: int = 16,
    options: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> Drift:
    """Explain `x` with both models (the reference's top-1 class) and compare the maps."""
    if not 0 < top_fraction <= 1:
        raise InputError(f"drift: top_fraction must be in (0, 1], got {top_fraction!r}")
    options = options or {}
    deployed_ex = Explainer(deployed, method=method, **options)
    reference_ex = Explainer(reference, method=method, **options)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(x))]
    dep_maps, ref_maps, agrees = [], [], []
    for lo in range(0, len(x), batch_size):
        batch = x[lo : lo + batch_size]
        ref = reference_ex.explain(batch)
        dep = deployed_ex.explain(batch, target=ref.target)
        if dep.saliency.shape != ref.saliency.shape:
            raise InputError(
                f"drift: the deployed model's maps have shape {dep.saliency.shape[1:]}, the "
                f"reference's {ref.saliency.shape[1:]}: compare two versions of one model"
            )
        dep_maps.append(dep.saliency)
        ref_maps.append(ref.saliency)
        agrees.append(dep.logits.argmax(1) == ref.logits.argmax(1))
        if progress is not None:
            progress(len(batch))
    dep_all, ref_all = np.concatenate(dep_maps), np.concatenate(ref_maps)
    return Drift(
        method=method,
        names=names,
        spearman=np.array([spearman(d, r) for d, r in zip(dep_all, ref_all)]),
        overlap=np.array([top_overlap(d, r, top_fraction) for d, r in zip(dep_all, ref_all)]),
        top1_agrees=np.concatenate(agrees),
        top_fraction=top_fraction,
        deployed_maps=dep_all,
        reference_maps=ref_all,
    )
