"""The engine's public API: convolution and pooling, forward and backward.

Names, arguments and results follow ``torch.nn.functional``. Arrays are numpy:
``x`` is (N, C_in, H, W) and ``weight`` is (C_out, C_in/groups, kH, kW).

Dtype rule: every array argument may have any real dtype (bool, integers,
float16/32/64); it is converted with ``np.asarray(a, dtype=np.float32)``, so
float64 is rounded to nearest and integers above 2**24 lose their low bits.
Results are always float32 and C-contiguous. NaN and inf propagate as in torch.

The engine validates and normalises arguments, picks an algorithm for the
shape and calls the Numba kernels in ``cnn_cli.kernels``. Bad arguments raise
``ValueError`` with a message that says what to change. Its modules, each
with one job:

- ``specs``: arguments and shapes (``ConvSpec``, ``PoolSpec`` and the public
  helpers layers use to validate their options), padding and unpadding;
- ``threads``: the thread pool that runs kernels and matrix products;
- ``paths``, ``gemm``, ``fft``, ``weight_grad``: the convolution paths, each a
  function with one signature per kind (forward, weight gradient); ``gemm``
  holds the tiled matrix products and the depthwise kernel of deep networks'
  layers;
- ``dispatch``: which path runs, by the thresholds in ``cnn_cli.config``;
- ``conv``, ``pool``: the public API below;
- ``affine``: the batched affine resampling of ``cnn train --augment``;
- ``prelu``: PReLU, one pass, in place for inference;
- ``batchnorm``: batch normalisation in training, forward and backward.
"""

from .affine import affine_bilinear
from .batchnorm import batch_norm_backward, batch_norm_train
from .conv import conv2d, conv2d_backward, conv2d_max_pool2d
from .pool import (
    avg_pool2d,
    avg_pool2d_backward,
    ceil_mode_extra,
    max_pool2d,
    max_pool2d_backward,
    max_pool2d_backward_from_argmax,
    max_pool2d_with_argmax,
)
from .prelu import prelu
from .specs import (
    ALGORITHMS,
    PADDING_MODES,
    ConvSpec,
    PoolSpec,
    check_conv_options,
    check_pool_options,
    conv_padding,
    n_elements,
    out_size,
    pair,
)

__all__ = [
    "ALGORITHMS",
    "PADDING_MODES",
    "ConvSpec",
    "PoolSpec",
    "affine_bilinear",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm_backward",
    "batch_norm_train",
    "ceil_mode_extra",
    "check_conv_options",
    "check_pool_options",
    "conv2d",
    "conv2d_backward",
    "conv2d_max_pool2d",
    "conv_padding",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_backward_from_argmax",
    "max_pool2d_with_argmax",
    "n_elements",
    "out_size",
    "pair",
    "prelu",
]
