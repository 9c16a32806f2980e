"""The fixed choices that options accept, as tuples of names.

The library checks its arguments against these tuples, and the CLI builds its
option enums from them, so a choice is listed once. This module imports
nothing, so ``cnn --help`` can read it without loading numpy or Numba.
"""

#: How images are read: luminance, or the R, G and B channels.
COLORS = ("gray", "rgb")

#: The input channels' names of each colour, as pipelines bind them.
CHANNEL_NAMES = {"gray": ("gray",), "rgb": ("R", "G", "B")}

#: How feature maps are scaled to PNG brightness (see ``viz.fit_scale``).
SCALE_METHODS = ("robust", "asinh", "minmax", "none")

#: The older values of ``cnn apply --normalize``: each names a method and what its scale is fitted over.
NORMALIZE_ALIASES = {"per-map": ("minmax", "map"), "per-layer": ("minmax", "layer")}

#: The default of ``cnn apply --normalize``: measured by ``bench/readability.py`` on
#: scikit-image's photos, it is the one method that leaves more than half of the
#: pixels of every shipped pipeline's maps away from the background grey (README).
DEFAULT_NORMALIZATION = "asinh"

#: What ``cnn apply --normalize`` accepts.
NORMALIZATIONS = SCALE_METHODS + tuple(NORMALIZE_ALIASES)

#: What one scale is fitted over: each map on its own, or all maps of a layer together.
NORMALIZE_PER = ("map", "layer")

#: Colour maps of the PNGs; ``coolwarm`` is diverging.
COLORMAPS = ("gray", "viridis", "magma", "coolwarm")

#: Optimizers of ``cnn train`` (``optim.OPTIMIZER_CLASSES`` maps each to its class).
OPTIMIZERS = ("sgd", "adam")

#: Learning-rate schedules over the epochs (``optim.learning_rate``).
SCHEDULES = ("constant", "step", "cosine")

#: Random augmentations of training images, each NAME or NAME=VALUE (``augment.DEFAULTS``).
AUGMENTATIONS = ("shift", "rotate", "flip", "vflip", "scale", "brightness", "contrast", "erase", "noise")

#: What an augmentation fills the border it exposes with: black, the mirror image, the edge pixel.
AUGMENT_FILLS = ("zeros", "reflect", "edge")

#: Which images of a labelled folder ``cnn evaluate`` scores (``inference.choose_images``).
EVAL_SPLITS = ("val", "train", "all")

#: Explanation methods of ``cnn explain`` (``explain.METHODS``; the first three use gradients).
EXPLAIN_METHODS = ("gradcam", "gradcam++", "hirescam", "scorecam", "occlusion")

#: Types of the raw maps that ``cnn apply`` and ``cnn embed`` write; float16 halves them.
DTYPES = ("float32", "float16")

#: What ``cnn apply --save`` may write besides the manifest: a PNG per map, a grid per layer, features.npz.
SAVE = ("maps", "grids", "raw")

#: How ``cnn embed`` pools a layer's maps into one vector (``embedding.pool_maps``).
POOLINGS = ("gap", "gmp", "gem", "stats")

#: ``cnn import --arch``: the named architectures whose torchvision-named weights a
#: safetensors file may hold, and the architecture file (in ``filters/``) of each.
IMPORT_ARCHITECTURES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                        "alexnet": "alexnet_imagenet", "vgg11": "vgg11", "vgg16": "vgg16",
                        "squeezenet1_1": "squeezenet1_1", "mobilenet_v2": "mobilenet_v2"}

#: ``cnn import --color``: the channels an imported network expects. A BGR network
#: (Caffe's, OpenCV's) is made to take RGB at import, so models only ever hold gray or rgb.
IMPORT_COLORS = ("gray", "rgb", "bgr")
