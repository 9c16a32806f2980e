"""A tiny model file for the tests that damage, mutate or inspect model files."""

from cnn_cli.modelfile import ModelMeta, build_network, save_model

#: conv 3x3 (2 filters), ReLU, max-pool 2, linear: 8x8 grey images of two classes.
META = {
    "architecture": {"name": "tiny", "description": "", "layers": [
        {"type": "conv", "out_channels": 2, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "maxpool", "kernel_size": 2}, {"type": "flatten"},
        {"type": "linear", "out_features": "classes"}]},
    "classes": ["cat", "dog"],
    "preprocessing": {"image_size": 8, "color": "gray", "channels": 1, "mean": [0.5], "std": [0.25]},
    "training": {},
}


def save_tiny_model(path):
    """Write the model of ``META`` (weights drawn with seed 0) to ``path``; returns ``path``."""
    meta = ModelMeta.from_parts(META)
    save_model(path, build_network(meta, seed=0), meta)
    return path
