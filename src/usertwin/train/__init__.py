"""Training: models, adapters, attention kernels, the training loop and its checkpoints."""
