"""Methods computed from forward passes and backward signals (CAM family, NormGrad, ...)."""
