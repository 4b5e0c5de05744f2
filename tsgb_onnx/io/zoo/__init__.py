"""Small model zoo: PyTorch definitions of real networks with shipped weights."""
