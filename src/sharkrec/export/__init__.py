"""Export and serving: the model artifact, the stored-precision lookup engine, batch and HTTP prediction.

``save_artifact(model_or_bundle, schema, vocabularies, path)`` writes an artifact directory;
``load_artifact(path)`` (also ``sharkrec.load``) returns a :class:`ServingModel`;
``save_user_artifact(field_model, example_inputs, path)`` writes a user model's artifact (loaded by
the same ``load_artifact``, served by the same app); ``predict_file`` scores a raw input file;
``sharkrec.export.server.create_app`` is the HTTP app (import it directly: it needs the ``serve`` extra).
"""

from sharkrec.export.artifact import ARTIFACT_FORMAT, ARTIFACT_VERSION, load_artifact, read_manifest, save_artifact
from sharkrec.export.engine import ServingEmbedding, ServingModel
from sharkrec.export.predict import PredictReport, predict_file
from sharkrec.export.user_artifact import UserServingModel, save_user_artifact

__all__ = [
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "PredictReport",
    "ServingEmbedding",
    "ServingModel",
    "UserServingModel",
    "load_artifact",
    "predict_file",
    "read_manifest",
    "save_artifact",
    "save_user_artifact",
]
