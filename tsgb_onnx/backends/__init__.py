"""Array backends that implement `engine.ops.ArrayOps`: NumPy (CPU), CuPy (GPU, fused kernels)
and the ONNX emitter (`tsgb convert`); `device` picks one for an explainer, `compile` turns a
reverse program into an explainer model with the emitter."""
