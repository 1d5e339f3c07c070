"""Hostile or damaged artifacts: one-line CheckpointErrors, no memory blow-up, no silent NaN scores.

Most tests edit an artifact the way a hand-crafted one would look: the files' hashes recomputed in
the manifest and the manifest's own digest (``manifest.sha256``) recomputed too, so the checks
behind the digest are what is tested. ``test_edited_manifest_*`` leave the digest stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sharkrec
from sharkrec.errors import CheckpointError
from sharkrec.export import load_artifact, read_manifest, save_artifact
from sharkrec.export.artifact import MANIFEST
from tests.export.conftest import serving_batch
from tests.export.test_artifact import compressed

REPO = Path(__file__).resolve().parents[2]
DIGEST = "manifest.sha256"  # the manifest's own sha256, in `sha256sum` format


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def _manifest(art: Path) -> dict:
    return json.loads((art / MANIFEST).read_text())


def _write_manifest(art: Path, manifest: dict, *, reseal: bool = True) -> None:
    """Write ``manifest``; with ``reseal`` also its digest, as a forger who knows the layout would."""
    raw = (json.dumps(manifest, indent=1) + "\n").encode()
    (art / MANIFEST).write_bytes(raw)
    if reseal and (art / DIGEST).exists():
        (art / DIGEST).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")


def _edit_manifest(art: Path, edit, *, reseal: bool = True) -> None:
    manifest = _manifest(art)
    edit(manifest)
    _write_manifest(art, manifest, reseal=reseal)


def _rewrite_tensors(art: Path, file_name: str, edit) -> None:
    """Edit the tensors of one safetensors file and recompute its size and sha256 in the (resealed) manifest."""
    path = art / file_name
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    manifest = _manifest(art)
    manifest["files"][file_name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                    "bytes": path.stat().st_size}
    _write_manifest(art, manifest)


@pytest.fixture
def artifact(toy_model, tmp_path):
    """A mixed-precision artifact (fp32, fp16 and int8 tiers in every field)."""
    model, data = toy_model
    save_artifact(compressed(model, data, "f-quant"), data.schema, data.vocabularies, tmp_path / "art")
    return tmp_path / "art"


@pytest.fixture
def pruned_artifact(toy_model, tmp_path):
    """Field 'b' pruned to a constant, the other fields in fp32 / fp16 / int8 tiers."""
    model, data = toy_model
    save_artifact(compressed(model, data, "pruned+mixed"), data.schema, data.vocabularies, tmp_path / "art")
    return tmp_path / "art"


@pytest.fixture
def no_network_built(monkeypatch):
    """Fail if any Linear layer is built: a rejected config must be rejected before the network exists."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a Linear layer was built before the model config was checked")

    monkeypatch.setattr(torch.nn.Linear, "__init__", refuse)


# ---------------------------------------------------------------- D7: the model config against the tensors


@pytest.mark.parametrize("change", [
    {"head": "mmoe", "num_experts": 10**9},
    {"head": "mmoe", "num_experts": 3},
    {"top_mlp": [10**7, 10**7]},
    {"top_mlp": [17]},
    {"tower_mlp": [8] * 1000},
    {"embedding_dim": 10**6},
    {"num_dense": 10**6},
    {"tasks": [f"t{i}" for i in range(5000)]},
    {"interaction": "concat"},
], ids=lambda change: ",".join(change))
def test_model_config_that_disagrees_with_the_tensors_is_refused_before_building(artifact, change,
                                                                                 no_network_built):
    _edit_manifest(artifact, lambda m: m["model"]["config"].update(change))
    with pytest.raises(CheckpointError) as exc:
        load_artifact(artifact)
    assert "re-export" in _one_line(exc)


def test_mmoe_config_names_the_tensors_it_lacks(artifact, no_network_built):
    _edit_manifest(artifact, lambda m: m["model"]["config"].update({"head": "mmoe", "num_experts": 3}))
    with pytest.raises(CheckpointError, match=r"head\.experts\.0\.0\.weight") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_absurd_config_value_names_the_bound(artifact, no_network_built):
    _edit_manifest(artifact, lambda m: m["model"]["config"].update({"head": "mmoe", "num_experts": 10**9}))
    with pytest.raises(CheckpointError, match=r"num_experts is 1000000000; use 1\.\.1024") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_embedding_dim_must_match_the_config(artifact, no_network_built):
    _edit_manifest(artifact, lambda m: m["embedding"].update({"dim": 9}))
    with pytest.raises(CheckpointError, match="dim") as exc:
        load_artifact(artifact)
    _one_line(exc)


@pytest.mark.parametrize("head", ["shared-bottom", "mmoe"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("interaction", ["dot", "dot-concat", "concat"])
@pytest.mark.parametrize("num_dense, tower", [(0, ()), (3, (4, 3))])
def test_dense_shapes_are_the_state_dict_of_the_network(head, dropout, interaction, num_dense, tower):
    """What the stored tensors are checked against is what DLRM builds, name for name."""
    from sharkrec.model.dlrm import DLRM, DLRMConfig

    config = DLRMConfig(num_dense=num_dense, field_rows=(("x", 3), ("y", 4)), embedding_dim=4, bottom_mlp=(7,),
                        top_mlp=(6, 2), tasks=("a", "b", "c"), head=head, num_experts=3, tower_mlp=tower,
                        dropout=dropout, interaction=interaction)
    built = {name: tuple(t.shape) for name, t in DLRM(config).state_dict().items()
             if not name.startswith("embedding.")}
    assert config.dense_shapes() == built


def _limit_memory() -> None:
    limit = 3 << 30  # torch imports in far less; building 10^9 experts does not fit
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_predict_with_a_billion_experts_is_a_one_line_error(artifact, tmp_path):
    """The probe's case end to end, in a process that cannot grow past 3 GiB (it grew to 15 GB)."""
    _edit_manifest(artifact, lambda m: m["model"]["config"].update({"head": "mmoe", "num_experts": 10**9}))
    (tmp_path / "rows.tsv").write_text("")
    result = _run_cli("predict", "--model", str(artifact), "--input", str(tmp_path / "rows.tsv"),
                      "--output", str(tmp_path / "scores.tsv"), preexec_fn=_limit_memory)
    _assert_one_line_error(result, "num_experts")


# ---------------------------------------------------------------- D8: values, dtypes, shapes, the digest


def _pruned_entry(manifest: dict) -> dict:
    return next(f for f in manifest["embedding"]["fields"] if f["status"] == "pruned")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5", None, True])
def test_constant_must_be_finite_numbers(pruned_artifact, value):
    def edit(manifest):
        constant = _pruned_entry(manifest)["constant"]
        constant[3] = value

    _edit_manifest(pruned_artifact, edit)
    with pytest.raises(CheckpointError, match="constant") as exc:
        load_artifact(pruned_artifact)
    assert "'b'" in _one_line(exc)


def test_constant_of_the_wrong_length_is_refused(pruned_artifact):
    _edit_manifest(pruned_artifact, lambda m: _pruned_entry(m)["constant"].append(0.0))
    with pytest.raises(CheckpointError, match="constant") as exc:
        load_artifact(pruned_artifact)
    _one_line(exc)


def _first_tier(manifest: dict, precision: str) -> dict:
    for field in manifest["embedding"]["fields"]:
        for tier in field.get("tiers", []):
            if tier["precision"] == precision:
                return tier
    raise AssertionError(precision)


@pytest.mark.parametrize("precision, kind", [("fp32", "payload"), ("fp16", "payload"), ("int8", "scale"),
                                             ("int8", "payload")])
def test_tensor_dtype_swap_is_refused(artifact, precision, kind):
    """Same bytes, another dtype in the header (F32 -> I32 and the like), every hash recomputed."""
    name = _first_tier(_manifest(artifact), precision)[kind]
    swap = {torch.float32: torch.int32, torch.float16: torch.int16, torch.int8: torch.uint8}

    def edit(tensors):
        tensors[name] = tensors[name].view(swap[tensors[name].dtype])

    _rewrite_tensors(artifact, "embedding.safetensors", edit)
    with pytest.raises(CheckpointError, match="dtype") as exc:
        load_artifact(artifact)
    assert name in _one_line(exc)


def test_dense_dtype_swap_is_refused(artifact):
    def edit(tensors):
        tensors["head.shared.0.weight"] = tensors["head.shared.0.weight"].view(torch.int32)

    _rewrite_tensors(artifact, "dense.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"head\.shared\.0\.weight.*int32") as exc:
        load_artifact(artifact)
    _one_line(exc)


@pytest.mark.parametrize("file_name, target", [("dense.safetensors", "head.shared.0.weight"),
                                               ("embedding.safetensors", "fp32"),
                                               ("embedding.safetensors", "fp16"),
                                               ("embedding.safetensors", "int8_scale")])
def test_non_finite_float_tensors_are_refused(artifact, file_name, target):
    manifest = _manifest(artifact)
    if target in ("fp32", "fp16"):
        name = _first_tier(manifest, target)["payload"]
    elif target == "int8_scale":
        name = _first_tier(manifest, "int8")["scale"]
    else:
        name = target

    def edit(tensors):
        tensors[name].view(-1)[1] = float("nan") if target != "int8_scale" else float("inf")

    _rewrite_tensors(artifact, file_name, edit)
    with pytest.raises(CheckpointError, match="finite") as exc:
        load_artifact(artifact)
    assert name in _one_line(exc)


def test_negative_scale_is_refused(artifact):
    name = _first_tier(_manifest(artifact), "int8")["scale"]

    def edit(tensors):
        tensors[name][0] = -1.0

    _rewrite_tensors(artifact, "embedding.safetensors", edit)
    with pytest.raises(CheckpointError, match="negative") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_payload_shape_must_match_the_dim(artifact):
    name = _first_tier(_manifest(artifact), "fp32")["payload"]

    def edit(tensors):
        tensors[name] = torch.cat([tensors[name], tensors[name][:, :1]], dim=1)  # (n, D + 1)

    _rewrite_tensors(artifact, "embedding.safetensors", edit)
    with pytest.raises(CheckpointError, match="shape") as exc:
        load_artifact(artifact)
    assert name in _one_line(exc)


def test_declared_slots_must_match_the_payload_rows(artifact):
    _edit_manifest(artifact, lambda m: m["embedding"]["fields"][0]["tiers"][0].update({"slots": [0, 1]}))
    with pytest.raises(CheckpointError, match="slots") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_payload_the_manifest_names_must_exist(artifact):
    _edit_manifest(artifact, lambda m: m["embedding"]["fields"][0]["tiers"][0].update({"payload": "field.0.nothing"}))
    with pytest.raises(CheckpointError, match=r"'field\.0\.nothing' that the manifest names is not stored") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_tensors_the_manifest_does_not_declare_are_refused(artifact):
    def edit(tensors):
        tensors["field.0.smuggled"] = torch.zeros(2, 2)

    _rewrite_tensors(artifact, "embedding.safetensors", edit)
    with pytest.raises(CheckpointError, match=r"field\.0\.smuggled") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_string_key_offsets_are_checked(csv_model, tmp_path):
    model, data = csv_model
    save_artifact(model, data.schema, data.vocabularies, tmp_path / "art")
    art = tmp_path / "art"
    name = next(n for n in load_file(str(art / "vocabulary.safetensors")) if n.endswith(".key_offsets"))

    def edit(tensors):
        tensors[name] = tensors[name].flip(0).contiguous()  # decreasing offsets

    _rewrite_tensors(art, "vocabulary.safetensors", edit)
    with pytest.raises(CheckpointError, match="offsets") as exc:
        load_artifact(art)
    _one_line(exc)


def test_save_writes_the_manifest_digest(artifact):
    raw = (artifact / MANIFEST).read_bytes()
    assert (artifact / DIGEST).read_text() == f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n"  # sha256sum -c
    assert _manifest(artifact)["manifest_digest"] == DIGEST


@pytest.mark.parametrize("edit", [
    lambda m: _first_tier(m, "fp32").update({"traffic": 1}),
    lambda m: m["embedding"]["fields"][0]["vocabulary"].update({"oov_slot": 2}),
    lambda m: m["schema"].update({"name": "other"}),
    lambda m: m.update({"manifest_digest": "elsewhere.sha256"}),
])
def test_edited_manifest_does_not_match_its_digest(artifact, edit):
    _edit_manifest(artifact, edit, reseal=False)
    with pytest.raises(CheckpointError, match="does not match its digest") as exc:
        load_artifact(artifact)
    assert "re-export" in _one_line(exc)


def test_edited_constant_does_not_match_its_digest(pruned_artifact):
    _edit_manifest(pruned_artifact, lambda m: _pruned_entry(m)["constant"].__setitem__(0, 0.5), reseal=False)
    with pytest.raises(CheckpointError, match="does not match its digest") as exc:
        read_manifest(pruned_artifact)
    _one_line(exc)


@pytest.mark.parametrize("damage", ["missing", "garbage", "empty"])
def test_damaged_digest_file_is_reported(artifact, damage):
    if damage == "missing":
        (artifact / DIGEST).unlink()
    else:
        (artifact / DIGEST).write_text("not a digest\n" if damage == "garbage" else "")
    with pytest.raises(CheckpointError, match=DIGEST.replace(".", r"\.")) as exc:
        load_artifact(artifact)
    assert "re-export" in _one_line(exc)


def test_artifacts_written_before_the_digest_still_load(toy_model, pruned_artifact):
    """An artifact of an earlier sharkrec: no manifest.sha256 and no 'manifest_digest' key."""
    _, data = toy_model
    want = load_artifact(pruned_artifact)
    (pruned_artifact / DIGEST).unlink(missing_ok=True)
    _edit_manifest(pruned_artifact, lambda m: m.pop("manifest_digest", None), reseal=False)
    served = load_artifact(pruned_artifact)
    batch = serving_batch(served, data.test.slice(0, 64), data.vocabularies)
    torch.testing.assert_close(served.predict_proba(batch), want.predict_proba(batch), atol=0, rtol=0)


# ---------------------------------------------------------------- D6: JSON too deep or too large


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("text", [
    DEEP,
    '{"format": "sharkrec-artifact", "version": 1, "schema": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"format": "sharkrec-artifact", "version": ' + "7" * 5000 + "}",
], ids=["deep", "deep-value", "long-number"])
def test_unreadable_manifest_json_is_a_one_line_error(artifact, text):
    (artifact / MANIFEST).write_text(text)
    for load in (load_artifact, sharkrec.load, read_manifest):
        with pytest.raises(CheckpointError) as exc:
            load(artifact)
        assert MANIFEST in _one_line(exc) and "re-export" in _one_line(exc)


def test_deep_manifest_names_the_problem(artifact):
    (artifact / MANIFEST).write_text(DEEP)
    with pytest.raises(CheckpointError, match="too deeply"):
        load_artifact(artifact)


def test_oversized_manifest_is_refused_before_reading(artifact):
    with open(artifact / MANIFEST, "r+b") as handle:
        handle.truncate(65 << 20)  # sparse: no 65 MiB written
    with pytest.raises(CheckpointError, match="MiB") as exc:
        load_artifact(artifact)
    _one_line(exc)


def test_serve_with_a_deep_manifest_is_a_one_line_error(artifact):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, httpx) is not installed")
    from sharkrec.export.server import create_app

    (artifact / MANIFEST).write_text(DEEP)
    with pytest.raises(CheckpointError) as exc:
        create_app(artifact)
    _one_line(exc)


def _run_cli(*args: str, **options) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "sharkrec.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, **options)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_predict_with_a_deep_manifest_is_a_one_line_error(artifact, tmp_path):
    (artifact / MANIFEST).write_text(DEEP)
    (tmp_path / "rows.tsv").write_text("")
    result = _run_cli("predict", "--model", str(artifact), "--input", str(tmp_path / "rows.tsv"),
                      "--output", str(tmp_path / "scores.tsv"))
    _assert_one_line_error(result, MANIFEST, "too deeply")
    assert not (tmp_path / "scores.tsv").exists()
