"""Array backends the executor runs rules on."""

from .numpy_ops import NumpyOps

__all__ = ["NumpyOps", "get_ops"]


def get_ops(name: str = "numpy"):
    """Return the array namespace called `name` ("numpy")."""
    if name == "numpy":
        return NumpyOps()
    raise ValueError(f"unknown array backend '{name}' (available: numpy)")
