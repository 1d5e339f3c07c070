"""Export and serving: the model artifact, the stored-precision lookup engine, batch and HTTP prediction.

``save_artifact(model_or_bundle, schema, vocabularies, path)`` writes an artifact directory;
``load_artifact(path)`` (also ``sharkrec.load``) returns a :class:`ServingModel`;
``predict_file`` scores a raw input file; ``sharkrec.export.server.create_app`` is the HTTP app
(import it directly: it needs the ``serve`` extra).
"""

from sharkrec.export.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, load_artifact, read_manifest, save_artifact
from sharkrec.export.engine import ServingEmbedding, ServingModel
from sharkrec.export.predict import PredictReport, predict_file

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "PredictReport",
    "ServingEmbedding",
    "ServingModel",
    "load_artifact",
    "predict_file",
    "read_manifest",
    "save_artifact",
]
