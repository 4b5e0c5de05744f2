"""The one table of built-in methods: every name `Explainer(method=...)` accepts.

Rule modules define rule sets and their per-node choices only; map-method modules define
their computations only; this table names them, with their options and descriptions.
"""

from __future__ import annotations

from tsgb_onnx.ir.graph import Graph
from tsgb_onnx.methods import averaging, cam, groupcam, meta_saliency, normgrad
from tsgb_onnx.methods.base import MapMethod, Method, MethodRegistry
from tsgb_onnx.rules import baselines, deeplift, ebp, lrp, tsgb
from tsgb_onnx.rules.gradient import GRADIENT

METHODS = MethodRegistry()
get_method = METHODS.get
available_methods = METHODS.names
register_method = METHODS.register

# -- one backward pass: a rule set over the exact gradient -------------------------------------
register_method(Method("gradient", GRADIENT, description="exact gradient (GradBP)"))
register_method(
    Method(
        "input_x_gradient",
        GRADIENT,
        description="input x gradient: the exact gradient rule set under an explicit name "
        "(every saliency map is already sum_c G*X)",
    )
)
register_method(
    Method(
        "guided_backprop",
        baselines.GUIDED,
        description="guided backprop: rectifiers pass G*(X>0)*(G>0) (ReLU6 Clip alike, LeakyRelu/"
        "PRelu: exact slope times G>0); everything else exact",
    )
)
register_method(
    Method(
        "deconvnet",
        baselines.DECONVNET,
        description="deconvnet: rectifiers pass G*(G>0), ignoring the forward mask; everything "
        "else exact",
    )
)
register_method(
    Method(
        "ebp",
        ebp.EBP,
        chooser=ebp.top_layer_chooser(ebp.EBP_TOP),
        prepare=ebp.prepare_ebp,
        description="Excitation Backprop: marginal winning probability through W+ "
        "(signed inputs by magnitude)",
    )
)
register_method(
    Method(
        "contrastive_ebp",
        ebp.EBP,
        chooser=ebp.top_layer_chooser(ebp.CEBP_TOP),
        prepare=ebp.prepare_contrastive_ebp,
        description="contrastive Excitation Backprop: target MWP minus the MWP of the dual "
        "unit with negated top-layer weights",
    )
)
register_method(
    Method(
        "lrp_epsilon",
        lrp.LRP,
        defaults={"epsilon": 1e-6},
        chooser=lrp.choose_rule,
        check_options=lrp.check_options,
        description="LRP-epsilon: z = Wx + b stabilised by epsilon*sign(z) on Conv, Gemm, "
        "MatMul(+bias), BatchNormalization, pooling and Add; MaxPool winner-take-all",
    )
)
register_method(
    Method(
        "deeplift",
        deeplift.DEEPLIFT,
        defaults={"baseline": 0.0},
        aliases={"baselines": "baseline"},
        description="DeepLIFT (rescale rule) against a baseline input (default 0)",
        check_options=deeplift.check_options,
        reference=deeplift.baseline_input,
    )
)
register_method(
    Method(
        "tsgb",
        tsgb.TSGB,
        # alpha 0.8 chosen by measurement (docs/benchmarks.md, "TSGB α"); alpha=1.0 reproduces
        # the reference code
        defaults={"alpha": 0.8, "reference_compat": False},
        description="Target-Selective Gradient Backprop (TSGB-FC + TSGB-Conv)",
        chooser=tsgb.choose_final_fc,
        check_options=tsgb.check_options,
        prepare=tsgb.warn_without_final_linear,
    )
)

# -- map methods: forward passes and backward signals combined -------------------------------
# `needs`: the tensors whose backward signals a map method reads, planned when an explainer
# is built (None: the model input)


def _none(graph: Graph, options: dict) -> list[str]:
    return []


def _input_only(graph: Graph, options: dict) -> list[str]:
    return [graph.input_name]


register_method(
    MapMethod(
        "gradcam",
        cam.gradcam,
        defaults={"layer": None, "upsample": "bilinear"},
        description="Grad-CAM: ReLU(sum_k mean(G_k) A_k) at a feature map, upsampled (bilinear, "
        "nearest or none); layer default: the last block output with the input's spatial "
        "axes (ViT / Mixer: the patch-embedding map); several layers: their min-max scaled "
        "maps averaged",
        check_options=cam.check_layer,
        several_layers=True,
        needs=cam.gradcam_layers,
    )
)
register_method(
    MapMethod(
        "fullgrad",
        cam.fullgrad,
        defaults={},
        description="FullGrad: |x * grad| plus |G[z] * b| of every Conv/BatchNormalization bias, "
        "each normalised per image, upsampled and summed",
        needs=cam.fullgrad_layers,
    )
)
register_method(
    MapMethod(
        "groupcam",
        groupcam.groupcam,
        defaults={
            "layer": None,
            "groups": 32,
            "threshold": 70.0,
            "blur_size": 51,
            "blur_sigma": 50.0,
            "batch_size": None,
        },
        description="Group-CAM: grouped Grad-CAM masks scored by the softmax gain of masked "
        "inputs over a blurred baseline (one batched forward)",
        check_options=groupcam.check_options,
        needs=cam.gradcam_layers,
    )
)
register_method(
    MapMethod(
        "normgrad",
        normgrad.normgrad_map,
        defaults={**normgrad.COMMON_DEFAULTS, "variant": "identity"},
        description="NormGrad: ||g|| ||x|| per location (virtual identity layer) or "
        "||g_out|| ||unfold(x_in)|| at an existing conv; several layers combined",
        check_options=normgrad.check_options,
        needs=normgrad.needed_layers,
    )
)
register_method(
    MapMethod(
        "selective_normgrad",
        normgrad.selective_normgrad_map,
        defaults=dict(normgrad.COMMON_DEFAULTS),
        description="selective NormGrad: ||(g ⊙ x)_+|| per location; several layers combined",
        check_options=normgrad.check_options,
        needs=normgrad.needed_layers,
    )
)
register_method(
    MapMethod(
        "meta_saliency",
        meta_saliency.meta_saliency,
        defaults={"base": "gradient", "lr": 1e-3},
        description="meta-saliency: the base method's map after one SGD step on the weights "
        "towards the target (options of the base method pass through)",
        check_options=meta_saliency.check_options,
        pass_options=True,
        needs=_input_only,  # the weight gradients; the base is planned as itself
    )
)
register_method(
    MapMethod(
        "smoothgrad",
        averaging.smoothgrad_map,
        defaults={
            "base": "gradient",
            "n": 25,
            "sigma": 0.15,
            "sigma_mode": "range",
            "seed": 0,
            "batch_size": 64,
            "samples_per_batch": None,
        },
        # Captum's NoiseTunnel names; its stdevs is an absolute noise std, and its
        # nt_samples_batch_size counts noisy copies of the whole batch, not rows
        aliases={
            "nt_samples": "n",
            "stdevs": lambda v: {"sigma": v, "sigma_mode": "absolute"},
            "nt_samples_batch_size": "samples_per_batch",
        },
        description="SmoothGrad: the base method's map averaged over n noisy copies "
        "(sigma: noise std as a fraction of each image's value range, or absolute with "
        "sigma_mode='absolute')",
        check_options=averaging.check_smoothgrad,
        pass_options=True,
        needs=_none,  # only its base reads a backward
    )
)
register_method(
    MapMethod(
        "integrated_gradients",
        averaging.integrated_gradients_map,
        defaults={
            "base": "gradient",
            "steps": 32,
            "baseline": 0.0,
            "quadrature": "midpoint",
            "batch_size": 64,
        },
        # Captum's IntegratedGradients names
        aliases={
            "n_steps": "steps",
            "baselines": "baseline",
            "internal_batch_size": "batch_size",
        },
        description="Integrated Gradients: sum_c (x - x0) * the base method's signal averaged "
        "over `steps` points from the baseline to x (quadrature midpoint or gausslegendre)",
        check_options=averaging.check_integrated_gradients,
        pass_options=True,
        needs=_none,  # only its base reads a backward
    )
)
