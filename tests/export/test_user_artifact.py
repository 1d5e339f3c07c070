"""A user's own model exported and served without its class: loaded scores equal the FieldModel's, no pickle."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sharkrec
from sharkrec.cluster.embedding import ClusteredEmbedding
from sharkrec.data.user import from_batches
from sharkrec.errors import CheckpointError, ConfigError, DataError
from sharkrec.export import save_user_artifact
from sharkrec.export.artifact import USER_FILES, read_manifest, write_manifest
from sharkrec.export.user_artifact import UserServingModel
from sharkrec.model.fieldmap import find_fields
from sharkrec.model.wrapped import FieldModel
from sharkrec.prune.plan import remove_fields
from sharkrec.quant.codec import Precision
from sharkrec.quant.embedding import MixedPrecisionEmbedding

ROWS = (50, 40, 30, 20)
DIM = 8


class DeepFM(nn.Module):
    """One nn.Embedding per field; FM + MLP on the (B, F, D) stack."""

    def __init__(self) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(r, DIM) for r in ROWS)
        self.mlp = nn.Sequential(nn.Linear(len(ROWS) * DIM, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, F) int64
        v = torch.stack([e(x[:, i]) for i, e in enumerate(self.embs)], 1)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return fm + self.mlp(v.flatten(1)).squeeze(1)


class SharedAndBag(nn.Module):
    """A shared nn.Embedding with per-field offsets (pytorch-fm layout) and a mean nn.EmbeddingBag (tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30 + 20, DIM)
        self.register_buffer("offsets", torch.tensor([0, 30]))
        self.tags = nn.EmbeddingBag(25, DIM, mode="mean")
        self.head = nn.Linear(3 * DIM, 2)

    def forward(self, x: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:  # x (B, 2), tags (B, L)
        v = self.emb(x + self.offsets)  # (B, 2, D)
        return self.head(torch.cat([v.flatten(1), self.tags(tags)], 1))


class DataDependent(DeepFM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.sum().item() > 0:  # Python control flow on a tensor value
            return out
        return -out


def deepfm_inputs(n: int, seed: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.stack([torch.randint(0, r, (n,), generator=g) for r in ROWS], 1),)


def shared_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, 30, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)], 1)
    return x, torch.randint(0, 25, (n, 3), generator=g)


MODELS = {"deepfm": (DeepFM, deepfm_inputs), "shared-bag": (SharedAndBag, shared_inputs)}


def wrapped(name: str) -> tuple[FieldModel, object]:
    torch.manual_seed(0)
    cls, inputs = MODELS[name]
    model = cls().eval()
    return FieldModel.wrap(model, find_fields(model, inputs(8, 0))).eval(), inputs


def compressed(model: FieldModel, how: str, inputs: object) -> FieldModel:
    if how == "fp32":
        return model
    if how == "int8":
        return model.with_embedding(MixedPrecisionEmbedding.from_float(model.embedding, "int8"))
    if how == "tiers":  # every precision in one field, so the engine routes between tiers
        codes = {name: torch.tensor([list(Precision)[r % 4].code for r in range(rows)], dtype=torch.int8)
                 for name, rows in model.field_rows().items()}
        return model.with_embedding(MixedPrecisionEmbedding.from_float(model.embedding, codes))
    if how == "pruned":
        split = from_batches(model, [(inputs(64, 5), torch.zeros(64, model.num_tasks))])
        return remove_fields(model, [model.field_names[1]], split)
    if how == "clustered":  # 5 shared rows per field
        maps = {name: torch.arange(rows) % 5 for name, rows in model.field_rows().items()}
        tables = {name: model.embedding.table(name).detach()[:5] for name in model.field_names}
        return model.with_embedding(ClusteredEmbedding.from_float(maps, tables))
    raise AssertionError(how)


CASES = [("deepfm", "fp32"), ("deepfm", "int8"), ("deepfm", "tiers"), ("deepfm", "pruned"), ("deepfm", "clustered"),
         ("shared-bag", "fp32"), ("shared-bag", "int8"), ("shared-bag", "tiers"), ("shared-bag", "pruned")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(model, compression): (in-memory FieldModel, inputs function, artifact path)}, each saved once."""
    out = {}
    for name, how in CASES:
        model, inputs = wrapped(name)
        model = compressed(model, how, inputs)
        path = tmp_path_factory.mktemp(f"{name}-{how}") / "art"
        save_user_artifact(model, inputs(8, 1), path)
        out[(name, how)] = (model, inputs, path)
    return out


@pytest.mark.parametrize(("name", "how"), CASES)
@pytest.mark.parametrize("kernel", ["fused", "fbgemm", "reference"])
def test_loaded_scores_equal_the_field_model(exported, name, how, kernel):
    model, inputs, path = exported[(name, how)]
    served = sharkrec.load(path, kernel=kernel)
    assert isinstance(served, UserServingModel)
    for batch in (1, 3, 37):  # any batch size serves (dynamic batch dims)
        x = inputs(batch, 10 + batch)
        with torch.no_grad():
            want = model(*x)
        got = served(*x)
        assert got.shape == want.shape
        # FBGEMM's 4-bit rows keep fp16 scales (<= 5e-4 relative per value, squared by the FM term)
        tolerance = 1e-2 if (how == "tiers" and kernel == "fbgemm") else 1e-5
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def test_manifest_and_mean_bag_weights(exported):
    model, inputs, path = exported[("shared-bag", "fp32")]
    manifest = read_manifest(path)
    assert manifest["kind"] == "user-model" and sorted(manifest["files"]) == sorted(USER_FILES)
    assert [f["name"] for f in manifest["embedding"]["fields"]] == ["emb.0", "emb.1", "tags"]
    assert manifest["inputs"]["tensors"] == [{"dtype": "int64", "ndim": 2, "shape": [None, 2]},
                                             {"dtype": "int64", "ndim": 2, "shape": [None, 3]}]
    served = sharkrec.load(path)
    x, tags = inputs(4, 3)
    vectors = served.field_vectors((x, tags))  # (B, F, D): the tags field is the mean of its rows
    want = model.embedding.table("tags").detach()[tags].mean(1)
    torch.testing.assert_close(vectors[:, 2], want, atol=1e-6, rtol=1e-6)
    assert len(served.ids_program.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default)) == 0


def test_pruned_field_reads_its_constant(exported):
    model, inputs, path = exported[("deepfm", "pruned")]
    served = sharkrec.load(path)
    vectors = served.field_vectors(inputs(5, 2))
    constant = model.embedding.constants[0]
    torch.testing.assert_close(vectors[:, 1], constant.expand(5, -1), atol=0, rtol=0)


def test_bad_inputs_are_one_line_errors(exported):
    _, inputs, path = exported[("deepfm", "fp32")]
    served = sharkrec.load(path)
    (x,) = inputs(4, 0)
    with pytest.raises(DataError, match=r"float32 of 2 dims"):
        served(x.float())
    with pytest.raises(DataError, match=r"structure|shaped"):
        served(x, x)
    with pytest.raises(DataError, match=r"shape \(4, 3\); the model takes \(B, 4\)"):
        served(x[:, :3])
    with pytest.raises(DataError, match=r"field 'embs\.0' got ids from .* 50 rows"):
        served(x + 100)


# ---------------------------------------------------------------------- HTTP
def test_http_serves_the_same_output(exported):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")
    from fastapi.testclient import TestClient

    from sharkrec.export.server import create_app

    for key in (("deepfm", "int8"), ("shared-bag", "pruned")):
        model, inputs, path = exported[key]
        x = inputs(6, 4)
        with TestClient(create_app(path)) as client:
            response = client.post("/predict", json={"inputs": [t.tolist() for t in x]})
            assert response.status_code == 200, response.text
            with torch.no_grad():
                want = model(*x)
            torch.testing.assert_close(torch.tensor(response.json()["output"]), want, atol=1e-5, rtol=1e-5)
            health = client.get("/health").json()
            assert health["kind"] == "user-model" and health["requests"] == 1
            bad = client.post("/predict", json={"inputs": [[1, 2, 3]] * len(x)})  # 1-D where (B, F) is exported
            assert bad.status_code == 400 and "dims" in bad.json()["error"]
            assert client.post("/predict", json={"rows": []}).status_code == 422
            bad = client.post("/predict", json={"inputs": [[[10 ** 6] * t.shape[1]] for t in x]})
            assert bad.status_code == 400 and "ids from 1000000" in bad.json()["error"]


# ---------------------------------------------------------------------- no pickle
class _Plant:
    """Unpickling this creates the marker file (what a hostile pickle would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


_UNPICKLED: list[str] = []
_WATCHING: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if _WATCHING and event == "pickle.find_class":
        _UNPICKLED.append(f"{args[0]}.{args[1]}")


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while a test watches


def _resign(path: Path) -> None:
    """Rewrite the manifest's sizes, sha256 and digest, as a forger who edited the files would."""
    manifest = json.loads((path / "manifest.json").read_text())
    write_manifest(path, manifest, USER_FILES)


def test_loading_never_unpickles_a_planted_pickle(exported, tmp_path):
    import shutil

    _, inputs, source = exported[("deepfm", "fp32")]
    path = tmp_path / "art"
    shutil.copytree(source, path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(marker))
    (path / "exported_program.pt2").write_bytes(payload)  # what torch.export.save would have left
    (path / "program.pt").write_bytes(payload)
    _WATCHING.append(True)
    try:
        served = sharkrec.load(path)  # extra files are never opened
        served(*inputs(2, 0))
        assert not marker.exists() and _UNPICKLED == []
        (path / "program.safetensors").write_bytes(payload)  # a pickle where the weights belong, re-signed
        _resign(path)
        with pytest.raises(CheckpointError, match="inconsistent"):
            sharkrec.load(path)
        assert not marker.exists() and _UNPICKLED == []
    finally:
        _WATCHING.clear()
    pickle.loads(payload)  # the plant is live: unpickling it does create the marker
    assert marker.exists()


def test_a_graph_calling_python_is_refused(exported, tmp_path):
    import shutil

    _, _, source = exported[("deepfm", "fp32")]
    path = tmp_path / "art"
    shutil.copytree(source, path)
    graph = (path / "program.dense.json").read_text()
    assert '"torch.ops.aten.relu.default"' in graph
    (path / "program.dense.json").write_text(graph.replace('"torch.ops.aten.relu.default"', '"torch.os.system"'))
    _resign(path)
    with pytest.raises(CheckpointError, match=r"torch\.os\.system"):
        sharkrec.load(path)


# ---------------------------------------------------------------------- export errors and bad dirs
def test_uncapturable_model_is_one_line_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = deepfm_inputs(8, 0)
    field_model = FieldModel.wrap(model, find_fields(model, x)).eval()
    with pytest.raises(ConfigError) as info:
        save_user_artifact(field_model, x, tmp_path / "art")
    message = str(info.value)
    assert "\n" not in message and "torch.export cannot capture" in message
    assert "if out.sum().item() > 0" in message  # names the construct (the user's line)
    assert list(tmp_path.iterdir()) == []


def test_bad_directories(exported, tmp_path):
    import shutil

    with pytest.raises(CheckpointError, match="does not exist"):
        sharkrec.load(tmp_path / "missing")
    _, _, source = exported[("deepfm", "fp32")]
    path = tmp_path / "art"
    shutil.copytree(source, path)
    (path / "program.ids.json").unlink()
    with pytest.raises(CheckpointError, match=r"lacks program\.ids\.json"):
        sharkrec.load(path)
    shutil.copy(source / "program.ids.json", path / "program.ids.json")
    with open(path / "embedding.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="corrupted"):
        sharkrec.load(path)
    with pytest.raises(CheckpointError, match="not a sharkrec artifact"):
        (tmp_path / "file").write_text("x")
        save_user_artifact(exported[("deepfm", "fp32")][0], deepfm_inputs(4, 0), tmp_path / "file")
    with pytest.raises(ConfigError, match="FieldModel"):
        save_user_artifact(DeepFM(), deepfm_inputs(4, 0), tmp_path / "other")


def test_engine_weighs_bags_on_every_kernel(exported):
    """Per-id bag weights (FieldIds.weights) multiply each row on the fused (kernel and PyTorch), FBGEMM and
    reference paths alike."""
    from sharkrec.data.batch import FieldIds

    _, _, path = exported[("shared-bag", "tiers")]
    values, offsets = torch.tensor([3, 7, 7, 1, 24]), torch.tensor([0, 2, 2, 5])
    weights = torch.tensor([0.5, 2.0, 1.0, -1.0, 0.25])
    results = []
    for kernel in ("fused", "fbgemm", "reference"):
        served = sharkrec.load(path, kernel=kernel)
        slots = served.slot_of_row["tags"].index_select(0, values)
        single = [FieldIds(torch.zeros(3, dtype=torch.int64))] * 2
        results.append(served.embedding([*single, FieldIds(slots, offsets, weights)])[:, 2])
        if kernel == "fused":
            pools, k = served.embedding._pools, served.embedding._pools.names.index("tags")
            results.append(pools.bag(slots, offsets, k, weights=weights, use_extension=False))
    reference = results[-1]
    rows = served.embedding._reference["tags"].index_select(0, slots) * weights.unsqueeze(1)
    want = torch.stack([rows[0:2].sum(0), torch.zeros(DIM), rows[2:5].sum(0)])
    torch.testing.assert_close(reference, want, atol=1e-6, rtol=1e-6)
    assert torch.equal(reference[1], torch.zeros(DIM))  # an empty bag pools to zeros
    for got in results[:-1]:
        torch.testing.assert_close(got, reference, atol=1e-2, rtol=1e-2)  # FBGEMM's int4 keeps fp16 scales


def test_training_counts_order_the_slots(tmp_path):
    """With UserData's vocabularies the hottest rows take the first slots; the scores do not change."""
    from sharkrec.data.user import UserData

    model, inputs = wrapped("deepfm")
    x = inputs(200, 7)
    hot = (x[0] % 3 == 0).long() * x[0]  # skewed: many rows read 0, ... the rest their own id
    split = from_batches(model, [((hot,), torch.zeros(200, 1))])
    data = UserData(model, split, split, split)  # (UserData without valid / test fails in UserSplit, see report)
    save_user_artifact(model, (hot[:8],), tmp_path / "art", vocabularies=data.vocabularies)
    served = sharkrec.load(tmp_path / "art")
    counts = torch.bincount(hot[:, 2], minlength=ROWS[2])
    assert int(served.slot_of_row["embs.2"][int(counts.argmax())]) == 0  # the hottest row is slot 0
    torch.testing.assert_close(served(*inputs(9, 8)), model(*inputs(9, 8)).detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="identity"):
        from sharkrec.data.vocab import Vocabulary

        vocabularies = dict(data.vocabularies)
        vocabularies["embs.0"] = Vocabulary("embs.0").fit(torch.arange(1, ROWS[0]).numpy().astype(str))
        save_user_artifact(model, (hot[:8],), tmp_path / "bad", vocabularies=vocabularies)
