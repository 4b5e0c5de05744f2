"""`python -m tsgb_onnx.cli`: the `tsgb` command."""

import sys

from tsgb_onnx.cli.main import main

sys.exit(main())
