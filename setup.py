"""Build hook: ship the CUDA sources of `kernels/` inside the wheel as tsgb_onnx/kernels/."""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    """build_py that also copies kernels/*.cu to tsgb_onnx/kernels/ in the build tree."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "tsgb_onnx", "kernels")
        os.makedirs(target, exist_ok=True)
        for source in glob.glob(os.path.join(os.path.dirname(__file__) or ".", "kernels", "*.cu")):
            shutil.copy2(source, target)


setup(cmdclass={"build_py": BuildPyWithKernels})
