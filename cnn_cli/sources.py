"""Where feature maps come from: banks, a pipeline, or a trained model (``--bank``, ``--pipeline``, ``--model``).

``cnn apply``, ``cnn embed``, ``cnn units`` and ``cnn search`` take the same three options;
``load_source`` turns them into one bound pipeline, the colour its images are
read in, the transform a model applies to them, and a record of the files
(with their SHA-256) that an output can name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from . import choices
from .pipeline import DEFAULT_PIPELINE, bank_pipeline, load_pipeline


#: How the maps of a pipeline's layer become one vector by default (see ``cnn_cli.embedding.POOLINGS``).
DEFAULT_PIPELINE_POOL = "gap"


@dataclass
class Source:
    pipeline: object
    color: str
    #: The model's resize and normalisation of a decoded image, or None.
    prepare: object = None
    #: "pipeline", "bank" or "model", and the files it was read from with their SHA-256.
    kind: str = "pipeline"
    files: list = field(default_factory=list)
    #: The options that make this source again (``load_source(**spec)``).
    spec: dict = field(default_factory=dict)
    #: For one vector per image (``cnn embed``): the layers that may be run in
    #: order, each one's output shape ((C, H, W) with only C known for a
    #: pipeline, or (F,)), the layer embedded by default and its pooling.
    vector_layers: list = field(default_factory=list)
    vector_shapes: list = field(default_factory=list)
    default_layer: int = -1
    default_pool: str = "gap"
    #: The graph of ``vector_layers``: the nodes each reads (``nn.INPUT`` the image) and their names.
    vector_inputs: list = field(default_factory=list)
    vector_names: list = field(default_factory=list)

    def describe(self):
        """A JSON-ready record of the source (what an output names as its origin)."""
        return {"kind": self.kind, "name": self.pipeline.name, "spec": self.spec, "files": self.files}


def file_record(path):
    """{"path": absolute path, "sha256": digest} of a file."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()}


def load_source(*, banks=None, pipeline=None, model=None, color="gray", memory_limit=None):
    """The bound source for the options given (at most one of them; none means the default pipeline).

    Raises ValueError (a bank, pipeline or model error) with a message for the user.
    """
    if sum(bool(x) for x in (banks, pipeline, model)) > 1:
        raise ValueError("give only one of --bank, --pipeline and --model")
    if model:
        return _model_source(model, memory_limit)
    if banks:
        pipe = bank_pipeline(banks)
        files = [file_record(bank.source) for bank in pipe.layers[0].banks]  # the files load_bank read
        kind, spec = "bank", {"banks": list(banks)}
    else:
        name = pipeline or DEFAULT_PIPELINE
        pipe = load_pipeline(name)
        files = [file_record(pipe.source)]  # the file load_pipeline read
        kind, spec = "pipeline", {"pipeline": str(Path(name).resolve()) if Path(name).suffix else name}
    pipe.bind(list(choices.CHANNEL_NAMES[color]), memory_limit)
    shapes = [(len(channels), None, None) for channels in pipe.channels]
    return Source(pipe, color, None, kind, files, spec, list(pipe.layers), shapes, len(pipe.layers) - 1,
                  DEFAULT_PIPELINE_POOL, list(pipe.inputs), list(pipe.names))


def _model_source(model, memory_limit=None):
    from .modelfile import feature_pipeline, image_transform, load_model

    network, meta, _ = load_model(model, memory_limit)
    pipe = feature_pipeline(network, meta, str(model), memory_limit)
    # The classifier is the last linear layer; what feeds it is the model's feature vector.
    kinds = [layer.kind for layer in network.layers]
    last_linear = len(kinds) - 1 - kinds[::-1].index("linear") if "linear" in kinds else len(kinds)
    layers = list(network.layers[:last_linear])
    return Source(pipe, meta.preprocessing.color, image_transform(meta), "model", [file_record(model)],
                  {"model": str(Path(model).resolve())}, layers, list(network.shapes[:last_linear]),
                  len(layers) - 1, "gap", list(network.inputs[:last_linear]), list(network.names[:last_linear]))
