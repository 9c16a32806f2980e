"""cnn: convolutional feature maps and small CNNs on the CPU, from the shell.

Importing the package is cheap on purpose: Numba is only imported by the
modules that run kernels (``cnn_cli.functional`` and below), so ``cnn --help``
answers at once.
"""

__version__ = "0.1.0"
