"""Models: loading (model/load.py) and the attention kernels that loading registers (model/attention.py)."""
