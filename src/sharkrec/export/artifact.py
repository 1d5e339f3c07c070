"""The model artifact: one directory of safetensors files and a JSON manifest.

Layout of ``ART/`` (written to a temporary sibling directory, then renamed into place)::

    manifest.json            format name + version, schema, model config, fields, tiers, scales,
                             the Table 1 row-header layout, memory, sha256 + size of every file
    manifest.sha256          the sha256 of manifest.json's bytes, as ``sha256sum`` writes it
                             (``sha256sum -c manifest.sha256`` checks it by hand)
    dense.safetensors        the network's weights (bottom MLP, head), DLRM state-dict names
    embedding.safetensors    per kept field k: field.k.<tier> payloads (slot order) and
                             field.k.<tier>_scale (int8 / int4), see :mod:`sharkrec.export.tables`
    vocabulary.safetensors   per kept field k: vocab.k.keys int64, or vocab.k.key_bytes uint8 +
                             vocab.k.key_offsets int64 (utf-8 strings), raw keys in slot order;
                             a clustered field (keys sharing slots) keeps its keys in vocabulary
                             order and adds vocab.k.key_slots int32, the slot of every key

A hashed embedding (a store that computes its rows from the id: QR, ROBE-Z, hybrid, mixed dims) has
no tier pools: embedding.safetensors holds its state tensors as layer.<name>, the manifest's
``embedding.layer`` its kind, spec, tensor list, bytes and row rule, and its fields keep their raw
keys in vocabulary order (slot = vocabulary row), see :mod:`sharkrec.export.layer`.

Kinds: a manifest without ``"kind"`` holds sharkrec's DLRM (this layout); ``"kind": "user-model"``
holds a user's own network as torch.export programs (:mod:`sharkrec.export.user_artifact`); both
share the manifest, digest, file checks and table layout.

Versions: 1 has one key per slot in every field; 2 adds ``vocab.k.key_slots`` (written only when a
field has shared slots, so artifacts without clustering stay version 1); 3 adds the embedding's
``layer`` (written only for a hashed embedding). All load.

Pruned fields have no tables: the manifest holds their constant vector.

Integrity. The manifest holds the sha256 of every safetensors file, and ``manifest.sha256`` holds
the sha256 of the manifest itself (its exact bytes: any edit, even of whitespace, is caught). The
manifest declares that file (``"manifest_digest": "manifest.sha256"``), so a copy that lost it is
reported as incomplete. Artifacts written before the digest existed have neither the file nor the
key and still load; a digest that is present and wrong is an error. The digest catches edits and
damage, not a forger: whoever rewrites the manifest can rewrite its digest, which is why the
values behind it are checked too (:mod:`sharkrec.export.integrity`).

:func:`load_artifact` checks, in order and before building any module: the manifest's size
(at most 64 MiB) and JSON, format, version, its digest, every file's size and sha256, the model
config's bounds (:class:`~sharkrec.model.dlrm.DLRMConfig`), the dense tensors against the shapes
the config implies, and every field's tensors (dtype, shape, finite values) and constants against
what the manifest declares. Any problem is one :class:`CheckpointError` line naming the fix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sharkrec.data.schema import Schema
from sharkrec.data.vocab import Vocabulary
from sharkrec.errors import CheckpointError, SharkrecError
from sharkrec.export import integrity
from sharkrec.export.engine import ServingEmbedding, ServingModel
from sharkrec.export.fused import PackedPools
from sharkrec.export.layer import layer_entry, read_layer
from sharkrec.export.shared import SortedKeys, StrKeys, cache_file, cache_tensors, open_or_build, read_mapped
from sharkrec.export.tables import TIERS, FieldTables, ServingVocabulary, TierPool, export_fields
from sharkrec.io import parse_json, read_bounded
from sharkrec.model.embedding import FieldEmbedding
from sharkrec.quant.codec import Precision

ARTIFACT_FORMAT = "sharkrec-artifact"
ARTIFACT_VERSION = 3
_KEY_SLOTS_VERSION = 2  # the first version with key -> slot arrays (clustered fields)
_LAYER_VERSION = 3  # the first version with a layer that computes rows (hashed embeddings)
MANIFEST = "manifest.json"
DIGEST = "manifest.sha256"
MAX_MANIFEST_BYTES = 64 << 20
FILES = ("dense.safetensors", "embedding.safetensors", "vocabulary.safetensors")
USER_KIND = "user-model"  # a user's own network (sharkrec.export.user_artifact)
USER_FILES = ("program.ids.json", "program.dense.json", "program.safetensors", "embedding.safetensors",
              "vocabulary.safetensors")
#: manifest kind → (highest version read, files); a manifest without a kind is sharkrec's DLRM
KINDS = {"dlrm": (ARTIFACT_VERSION, FILES), USER_KIND: (2, USER_FILES)}
#: Table 1 of the paper: the words a packed row would carry, and where this layout keeps each
ROW_HEADER = [
    {"word": "precision", "bytes": 1, "kept_as": "the tier's slot range (fields[].tiers[].slots)"},
    {"word": "dimension", "bytes": 2, "kept_as": "embedding.dim (one D for every row)"},
    {"word": "scale", "bytes": 4, "kept_as": "field.<k>.<tier>_scale float32 (int8 / int4 rows)"},
]
HEADER_BYTES_PER_ROW = 1 + 2 + 4
_FIX = "re-export it with 'sharkrec compress' (or save_artifact)"


def save_artifact(model_or_bundle: Any, schema: Schema | None, vocabularies: Mapping[str, Vocabulary] | None,
                  path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the artifact directory ``path`` atomically; returns the manifest.

    Args:
        model_or_bundle: a DLRM (fp32, mixed-precision, pruned, clustered or hashed embedding) or a ``ModelBundle``.
        schema, vocabularies: the training schema and vocabularies (taken from a bundle when ``None``).
        path: the artifact directory; an existing artifact there is replaced, anything else is refused.
    """
    model = getattr(model_or_bundle, "model", model_or_bundle)
    schema = schema if schema is not None else getattr(model_or_bundle, "schema", None)
    vocabularies = vocabularies if vocabularies is not None else getattr(model_or_bundle, "vocabularies", None)
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None or not hasattr(model, "embedding"):
        raise CheckpointError(f"cannot export a {type(model).__name__}; pass a sharkrec DLRM or a ModelBundle")
    if schema is None or vocabularies is None:
        raise CheckpointError("an artifact needs the schema and vocabularies; pass them or a ModelBundle")
    embedding = model.embedding
    if not isinstance(embedding, FieldEmbedding):
        raise CheckpointError(f"cannot export a {type(embedding).__name__} embedding; use a sharkrec FieldEmbedding")
    tables, constants, layer = export_fields(embedding, vocabularies)
    dim = int(embedding.embedding_dim)
    dense = {name: t.detach().contiguous() for name, t in model.state_dict().items()
             if not name.startswith("embedding.")}
    check_exportable(dense, constants)
    section, tensors, vocab_tensors = embedding_section(embedding.field_names, tables, constants, layer, dim)
    manifest: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "version": _version(tables, layer),
        "model": {"class": type(model).__name__, "config": config.to_dict()},
        "schema": schema.to_dict(),
        "tasks": list(getattr(model, "task_names", ())),
        "embedding": section,
        "memory": _memory(tables, len(constants), dim, layer),
        "manifest_digest": DIGEST,
    }
    with _atomic_dir(Path(path)) as tmp:
        contents = {"dense.safetensors": dense, "embedding.safetensors": tensors,
                    "vocabulary.safetensors": vocab_tensors}
        for file_name, payload in contents.items():
            save_file(payload, str(tmp / file_name))
        write_manifest(tmp, manifest, FILES)
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any], files: tuple[str, ...]) -> None:
    """Add the size and sha256 of ``files`` (written in ``folder``) to ``manifest``; write it and its digest."""
    manifest["manifest_digest"] = DIGEST
    manifest["files"] = {name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
                         for name in files}
    raw = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    (folder / MANIFEST).write_bytes(raw)
    (folder / DIGEST).write_text(_digest_line(raw), encoding="ascii")


def check_exportable(dense: Mapping[str, Tensor], constants: Mapping[str, Tensor]) -> None:
    """Refuse to write what :func:`load_artifact` would refuse: non-finite dense weights or constants."""
    try:
        for name, value in [*dense.items(), *((f"constant of {n}", c) for n, c in constants.items())]:
            if value.is_floating_point():
                integrity.check_finite(name, value)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot export the model: {exc}; retrain it or restore a good checkpoint") from None


def embedding_section(field_names: Sequence[str], tables: Sequence[FieldTables], constants: Mapping[str, Tensor],
                      layer: FieldEmbedding | None, dim: int
                      ) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """The manifest's ``embedding`` section and the embedding / vocabulary tensors it names."""
    fields, tensors, vocab_tensors = embedding_entries(field_names, tables, constants)
    section: dict[str, Any] = {"dim": dim, "row_header": ROW_HEADER, "fields": fields}
    if layer is not None:
        section["layer"] = layer_entry(layer, tensors)
    return section, tensors, vocab_tensors


def embedding_entries(field_names: Sequence[str], tables: Sequence[FieldTables], constants: Mapping[str, Tensor]
                      ) -> tuple[list[dict[str, Any]], dict[str, Tensor], dict[str, Tensor]]:
    """The manifest's field entries (model order) and the embedding / vocabulary tensors they name."""
    tensors: dict[str, Tensor] = {}
    vocab_tensors: dict[str, Tensor] = {}
    kept = {t.name: (k, t) for k, t in enumerate(tables)}
    fields = []
    for name in field_names:
        if name in constants:
            fields.append({"name": name, "status": "pruned", "constant": constants[name].tolist()})
        else:
            k, table = kept[name]
            fields.append(_field_entry(k, table, tensors, vocab_tensors))
    return fields, tensors, vocab_tensors


def _field_entry(k: int, table: FieldTables, tensors: dict[str, Tensor], vocab_tensors: dict[str, Tensor]
                 ) -> dict[str, Any]:
    tiers = []
    for pool, (precision, start, end) in zip(table.tiers, table.bounds(), strict=True):
        payload_name = f"field.{k}.{precision.value}"
        tensors[payload_name] = pool.payload
        scale_name = None
        if pool.scale is not None:
            scale_name = f"field.{k}.{precision.value}_scale"
            tensors[scale_name] = pool.scale
        tiers.append({"precision": precision.value, "slots": [start, end], "traffic": pool.traffic,
                      "payload": payload_name, "scale": scale_name})
    vocab = table.vocabulary
    _store_keys(k, vocab, vocab_tensors)
    key_slots = None
    if vocab.key_slots is not None:
        key_slots = f"vocab.{k}.key_slots"
        vocab_tensors[key_slots] = torch.from_numpy(np.ascontiguousarray(vocab.key_slots, dtype=np.int32))
    # no tiers: the layer computes this field's rows (store "layer"), the keys are all the field stores
    where: dict[str, Any] = {"rows": table.rows, "tiers": tiers} if table.tiers else {"store": "layer", "tiers": []}
    return {"name": table.name, "status": "kept", "index": k, **where,
            "vocabulary": {"key_kind": vocab.key_kind, "size": len(vocab.keys), "oov_slot": vocab.oov_slot,
                           "key_slots": key_slots}}


def _store_keys(k: int, vocab: ServingVocabulary, vocab_tensors: dict[str, Tensor]) -> None:
    """The raw keys of kept field ``k``: vocab.k.keys (int), or vocab.k.key_bytes + vocab.k.key_offsets (str)."""
    if vocab.key_kind == "int":
        vocab_tensors[f"vocab.{k}.keys"] = torch.from_numpy(np.ascontiguousarray(vocab.keys, dtype=np.int64))
    else:
        encoded = [str(key).encode("utf-8", errors="surrogateescape") for key in vocab.keys]
        offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        vocab_tensors[f"vocab.{k}.key_bytes"] = torch.from_numpy(np.frombuffer(b"".join(encoded) or b"\0",
                                                                               dtype=np.uint8).copy())
        vocab_tensors[f"vocab.{k}.key_offsets"] = torch.from_numpy(offsets)


def _version(tables: list[FieldTables], layer: FieldEmbedding | None = None) -> int:
    """The lowest format version that holds ``tables`` (older readers keep loading what they can read)."""
    if layer is not None:
        return _LAYER_VERSION
    return _KEY_SLOTS_VERSION if any(t.vocabulary.key_slots is not None for t in tables) else 1


def _memory(tables: list[FieldTables], removed: int, dim: int, layer: FieldEmbedding | None = None
            ) -> dict[str, int]:
    """Bytes held for lookups: ``embedding_bytes`` = tier payloads + scales + pruned constants + key → slot
    arrays + the hashed layer's tensors (``layer_bytes``); ``vocabulary_bytes`` (the raw keys the
    vocabulary stores, key → slot arrays included) is reported apart, as the raw value → slot step."""
    payload = sum(p.payload.numel() * p.payload.element_size() for t in tables for p in t.tiers)
    scales = sum(p.scale.numel() * 4 for t in tables for p in t.tiers if p.scale is not None)
    key_slots = sum(t.vocabulary.key_slot_bytes for t in tables)
    layer_bytes = 0 if layer is None else int(layer.embedding_bytes())
    rows = sum(t.rows for t in tables)
    values = sum(len(t.vocabulary.keys) + 1 for t in tables)  # vocabulary rows (OOV included) a slot serves
    header = HEADER_BYTES_PER_ROW * rows
    return {"rows": rows, "value_rows": values, "payload_bytes": payload, "scale_bytes": scales,
              "constant_bytes": 4 * dim * removed, "key_slot_bytes": key_slots, "layer_bytes": layer_bytes,
              "embedding_bytes": payload + scales + 4 * dim * removed + key_slots + layer_bytes,
              "table1_header_bytes": header, "table1_bytes": payload + header, "fp32_bytes": 4 * dim * rows,
              "fp32_value_bytes": 4 * dim * values,
              "vocabulary_bytes": sum(_vocabulary_bytes(k, t.vocabulary) for k, t in enumerate(tables))}


def _vocabulary_bytes(k: int, vocab: ServingVocabulary) -> int:
    """Bytes of kept field ``k``'s tensors in vocabulary.safetensors (raw keys, key → slot array)."""
    keys: dict[str, Tensor] = {}
    _store_keys(k, vocab, keys)
    return sum(t.numel() * t.element_size() for t in keys.values()) + vocab.key_slot_bytes


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; it replaces ``target`` if the block succeeds."""
    if target.exists() and not (target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))):
        raise CheckpointError(f"{str(target)!r} exists and is not a sharkrec artifact; choose another output path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "artifact")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_dir(path: str | os.PathLike[str]) -> Path:
    """``path``, or ``path/artifact`` when ``path`` is the folder ``sharkrec compress`` wrote (holding the artifact)."""
    root = Path(path)
    if root.is_dir() and not (root / MANIFEST).exists() and (root / "artifact" / MANIFEST).is_file():
        return root / "artifact"
    return root


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of artifact ``path`` (format, version, files present with the right size and sha256)."""
    root = artifact_dir(path)
    if not root.is_dir():
        what = "is a file, not an artifact directory" if root.exists() else "does not exist"
        raise CheckpointError(f"artifact {str(root)!r} {what}; pass the directory written by save_artifact")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"artifact {str(root)!r} has no {MANIFEST}; it is incomplete, {_FIX}")
    raw = read_bounded(manifest_path, "artifact manifest", CheckpointError, _FIX, fix=_FIX,
                       max_bytes=MAX_MANIFEST_BYTES)
    manifest = parse_json(raw, manifest_path, "artifact manifest", CheckpointError, _FIX)
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise CheckpointError(f"{str(root)!r} is not a {ARTIFACT_FORMAT} directory; pass an artifact written by "
                              "sharkrec")
    kind = manifest.get("kind", "dlrm")
    if kind not in KINDS:
        raise CheckpointError(f"artifact {str(root)!r} is of kind {kind!r}; this sharkrec serves kinds "
                              f"{', '.join(KINDS)}: upgrade sharkrec or re-export the model")
    highest, expected = KINDS[kind]
    version = manifest.get("version")
    if not isinstance(version, int) or not 1 <= version <= highest:
        raise CheckpointError(f"artifact {str(root)!r} has format version {version!r}; this sharkrec reads versions "
                              f"1..{highest}: upgrade sharkrec or re-export the model")
    _check_digest(root, manifest, raw)
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(expected):
        raise CheckpointError(f"artifact {str(root)!r} lists files {sorted(files or {})}, expected "
                              f"{list(expected)}; {_FIX}")
    for name, entry in files.items():
        file = root / name
        if not isinstance(entry, dict):
            raise CheckpointError(f"artifact {str(root)!r} has no size and sha256 for {name}; {_FIX}")
        if not file.is_file():
            raise CheckpointError(f"artifact {str(root)!r} lacks {name}; it is incomplete, {_FIX}")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise CheckpointError(f"artifact file {str(file)!r} is truncated or extended ({size} bytes, the manifest "
                                  f"says {entry.get('bytes')}); {_FIX}")
        if _sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"artifact file {str(file)!r} is corrupted (sha256 differs from the manifest); "
                                  f"{_FIX}")
    return manifest


def _digest_line(raw: bytes) -> str:
    """The ``manifest.sha256`` text of manifest bytes ``raw`` (``sha256sum`` format)."""
    return f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n"


def _check_digest(root: Path, manifest: Mapping[str, Any], raw: bytes) -> None:
    """``manifest.sha256`` matches the manifest bytes ``raw`` (an artifact older than the digest has neither)."""
    declared = manifest.get("manifest_digest")
    digest_path = root / DIGEST
    if not digest_path.is_file():
        if declared is not None:
            raise CheckpointError(f"artifact {str(root)!r} lacks {DIGEST}, which its {MANIFEST} declares; it is "
                                  f"incomplete, {_FIX}")
        return  # written before sharkrec stored the manifest's digest
    words = read_bounded(digest_path, "artifact digest", CheckpointError, _FIX, fix=_FIX, max_bytes=4096).split()
    stored = words[0].decode("ascii", errors="replace") if words else ""
    if not re.fullmatch(r"[0-9a-f]{64}", stored):
        raise CheckpointError(f"artifact {str(root)!r} has a damaged {DIGEST} (no sha256 digest in it); {_FIX}")
    if stored != hashlib.sha256(raw).hexdigest() or declared != DIGEST:
        raise CheckpointError(f"artifact {str(root)!r} is inconsistent: its {MANIFEST} does not match its digest in "
                              f"{DIGEST} (edited or damaged after export); {_FIX}")


def load_artifact(path: str | os.PathLike[str], *, kernel: str = "fused",
                  cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """The inference model of artifact ``path``: a :class:`ServingModel` (sharkrec's DLRM) or, for a
    ``"user-model"`` artifact, a :class:`~sharkrec.export.user_artifact.UserServingModel`; ``kernel`` picks
    the lookup path (see the engine).

    With ``cache_dir`` (the fused kernel), the files are memory-mapped and the packed pools and sorted
    vocabulary keys are mapped from a serving cache file in that folder, built by the first process that
    loads the artifact (:mod:`sharkrec.export.shared`): processes serving the same artifact then share
    one copy of the tables.
    """
    from sharkrec.model.dlrm import DLRM, DLRMConfig

    manifest = read_manifest(path)
    root = artifact_dir(path)
    if manifest.get("kind") == USER_KIND:
        return _load_user(root, manifest, kernel)
    try:
        config = DLRMConfig.from_dict(manifest["model"]["config"])  # bounded values (no 10^9 experts)
        schema = Schema.from_dict(manifest["schema"])
        section = manifest["embedding"]
        # a hashed layer is small and rebuilt per process: the serving cache holds tier pools only
        shared = cache_dir is not None and kernel == "fused" and not section.get("layer")
        loaded = {name: read_mapped(root / name)[0] if shared else load_file(str(root / name)) for name in FILES}
        integrity.check_dense(config, loaded["dense.safetensors"])  # before any layer is built
        dim = integrity.integer(section["dim"], "embedding dim", 1)
        if dim != config.embedding_dim:
            raise CheckpointError(f"embedding dim {dim} differs from the model config's {config.embedding_dim}")
        names = [entry["name"] for entry in section["fields"]]
        if names != list(config.sparse_names):
            raise CheckpointError(f"fields {integrity.names(names)} differ from the model config's sparse fields "
                                  f"{integrity.names(config.sparse_names)}")
        tables, constants, layer = _read_fields(section, dim, loaded)
        multi_hot = [spec.name for spec in schema.sparse if spec.is_multi_hot]
        pools = None
        if shared:
            assert cache_dir is not None
            tables, pools = _shared_tables(tables, dim, cache_file(cache_dir, _manifest_sha256(root)))
        embedding = ServingEmbedding(names, tables, constants, dim, kernel=kernel, multi_hot=multi_hot, pools=pools,
                                     layer=layer)
        network = DLRM(config, embedding)
        network.load_state_dict(loaded["dense.safetensors"], strict=True)
    except SharkrecError as exc:
        raise CheckpointError(f"artifact {str(root)!r} is inconsistent ({exc}); {_FIX}") from None
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"artifact {str(root)!r} is inconsistent ({reason}); {_FIX}") from None
    return ServingModel(network, schema, {t.name: t.vocabulary for t in tables}, manifest)


def _manifest_sha256(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def _shared_tables(tables: list[FieldTables], dim: int, path: Path) -> tuple[list[FieldTables], PackedPools]:
    """The kept fields' tables with their vocabularies searching mapped sorted keys, and the packed pools
    mapped from serving cache file ``path`` (written first if absent or damaged)."""
    names = [t.name for t in tables]

    def build() -> tuple[dict[str, Tensor], dict[str, str]]:
        keys = {k: SortedKeys.build(t.vocabulary.keys) for k, t in enumerate(tables)}
        return cache_tensors(PackedPools.build(tables, dim).tensors(), keys), {"fields": json.dumps(names),
                                                                              "dim": str(dim)}

    mapped, metadata = open_or_build(path, build)
    if metadata.get("fields") != json.dumps(names) or metadata.get("dim") != str(dim):
        raise CheckpointError(f"serving cache {str(path)!r} was built for other fields; delete it")
    pools = PackedPools.from_tensors(names, {k.removeprefix("pools."): v for k, v in mapped.items()
                                             if k.startswith("pools.")}, dim)
    shared = []
    for k, table in enumerate(tables):
        vocabulary = table.vocabulary
        texts = vocabulary.keys if isinstance(vocabulary.keys, StrKeys) else None
        lookup = SortedKeys(mapped[f"keys.{k}.sorted"].numpy(), mapped[f"keys.{k}.order"].numpy(), texts)
        shared.append(replace(table, vocabulary=replace(vocabulary, lookup=lookup)))
    return shared, pools


def _load_user(root: Path, manifest: dict[str, Any], kernel: str) -> Any:
    from sharkrec.export.user_artifact import load_user_artifact

    fix = "re-export it with save_user_artifact"
    try:
        return load_user_artifact(root, manifest, kernel=kernel)
    except SharkrecError as exc:
        raise CheckpointError(f"artifact {str(root)!r} is inconsistent ({exc}); {fix}") from None
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"artifact {str(root)!r} is inconsistent ({reason}); {fix}") from None


def serving_model(model: Any, schema: Schema, vocabularies: Mapping[str, Vocabulary], *, kernel: str = "fused"
                  ) -> ServingModel:
    """The :class:`ServingModel` that :func:`load_artifact` would return for ``save_artifact(model, ...)``,
    built in memory (no files; the manifest has only format, version and memory)."""
    from sharkrec.model.dlrm import DLRM

    tables, constants, layer = export_fields(model.embedding, vocabularies)
    multi_hot = [spec.name for spec in schema.sparse if spec.is_multi_hot]
    served_layer = None if layer is None else copy.deepcopy(layer)  # serving freezes it; the model keeps training
    embedding = ServingEmbedding(model.embedding.field_names, tables, constants, int(model.embedding.embedding_dim),
                                 kernel=kernel, multi_hot=multi_hot, layer=served_layer)
    network = DLRM(model.config, embedding)
    network.load_state_dict({name: t for name, t in model.state_dict().items() if not name.startswith("embedding.")},
                            strict=True)
    manifest = {"format": ARTIFACT_FORMAT, "version": _version(tables, layer),
                "memory": _memory(tables, len(constants), int(model.embedding.embedding_dim), layer)}
    return ServingModel(network, schema, {t.name: t.vocabulary for t in tables}, manifest)


def _read_fields(section: Mapping[str, Any], dim: int, loaded: Mapping[str, Mapping[str, Tensor]]
                 ) -> tuple[list[FieldTables], dict[str, Tensor], FieldEmbedding | None]:
    """The kept fields' tables, the pruned fields' (D,) constants and the layer computing rows (or ``None``),
    each checked against the manifest."""
    tensors, vocab = loaded["embedding.safetensors"], loaded["vocabulary.safetensors"]
    tables: list[FieldTables] = []
    constants: dict[str, Tensor] = {}
    declared: set[str] = set()  # every tensor name a field declares
    layer = read_layer(section["layer"], tensors, declared) if section.get("layer") is not None else None
    if layer is not None and layer.embedding_dim != dim:
        raise CheckpointError(f"the {layer.kind} layer has dim {layer.embedding_dim}, the embedding {dim}")
    for entry in section["fields"]:
        name, status = entry["name"], entry["status"]
        if status == "pruned":
            constants[name] = integrity.check_constant(name, entry["constant"], dim)
        elif status == "kept":
            if integrity.integer(entry["index"], f"field {name!r} index") != len(tables):
                raise CheckpointError(f"field {name!r} has index {entry['index']}; kept fields are numbered 0, 1, "
                                      "... in field order")
            tables.append(_read_field(entry, dim, tensors, vocab, declared, layer))
        else:
            raise CheckpointError(f"field {name!r} has status {status!r}; expected 'kept' or 'pruned'")
    served = [t.name for t in tables if not t.tiers]
    if layer is not None and served != list(layer.field_names):
        raise CheckpointError(f"the {layer.kind} layer serves fields {integrity.names(layer.field_names)} but the "
                              f"fields stored as its are {integrity.names(served)}")
    integrity.check_declared("embedding.safetensors", tensors, declared)
    integrity.check_declared("vocabulary.safetensors", vocab, declared)
    return tables, constants, layer


def _read_tiers(entry: Mapping[str, Any], dim: int, tensors: Mapping[str, Tensor], declared: set[str]
                ) -> tuple[TierPool, ...]:
    """A kept field's tier pools: precisions in slot order, contiguous declared slots, payloads and scales of
    the dtype and shape their precision stores (see :mod:`sharkrec.export.integrity`)."""
    name, tiers = entry["name"], entry["tiers"]
    if not isinstance(tiers, list) or not tiers:
        raise CheckpointError(f"field {name!r} has no tiers; a kept field has at least one")
    pools, start, last = [], 0, -1
    for tier in tiers:
        precision = Precision.parse(tier["precision"])
        if TIERS.index(precision) <= last:
            raise CheckpointError(f"field {name!r} lists tier {precision.value} out of order; tiers are "
                                  f"{', '.join(t.value for t in TIERS)} in slot order, each once")
        last = TIERS.index(precision)
        payload_name = tier["payload"]
        rows = int(tensors[payload_name].shape[0]) if payload_name in tensors and tensors[payload_name].ndim else 0
        width = (dim + 1) // 2 if precision is Precision.INT4 else dim
        payload = integrity.check_tensor(payload_name, tensors, integrity.PAYLOAD_DTYPES[precision], (rows, width))
        declared.add(payload_name)
        if rows < 1 or tier["slots"] != [start, start + rows]:
            raise CheckpointError(f"field {name!r} tier {precision.value} declares slots {tier['slots']!r} but its "
                                  f"payload {payload_name!r} holds {rows} rows from slot {start}")
        if payload.is_floating_point():
            integrity.check_finite(payload_name, payload)
        scale_name, scale = tier.get("scale"), None
        if precision in (Precision.INT8, Precision.INT4):
            scale = integrity.check_tensor(scale_name, tensors, torch.float32, (rows,))
            integrity.check_scale(scale_name, scale, precision)
            declared.add(scale_name)
        elif scale_name is not None:
            raise CheckpointError(f"field {name!r} tier {precision.value} names a scale {scale_name!r}; only int8 "
                                  "and int4 rows have scales")
        pools.append(TierPool(precision, payload, scale, integrity.integer(tier["traffic"], "tier traffic")))
        start += rows
    if "rows" in entry and entry["rows"] != start:
        raise CheckpointError(f"field {name!r} declares {entry['rows']!r} rows but its tiers hold {start}")
    return tuple(pools)


def _read_field(entry: Mapping[str, Any], dim: int, tensors: Mapping[str, Tensor], vocab: Mapping[str, Tensor],
                declared: set[str], layer: FieldEmbedding | None) -> FieldTables:
    name, k, info = str(entry["name"]), int(entry["index"]), entry["vocabulary"]
    store = entry.get("store", "tiers")
    if store == "layer":  # rows computed by the layer from the slot (= vocabulary row, OOV 0)
        if layer is None or name not in layer.field_names:
            raise CheckpointError(f"field {name!r} is stored as the embedding's layer, which the manifest lacks")
        if info.get("key_slots") or info["oov_slot"] != 0:
            raise CheckpointError(f"field {name!r} of the {layer.kind} layer has a key -> slot array or an OOV slot "
                                  f"{info['oov_slot']!r}; its slots are vocabulary rows (OOV 0)")
        pools: tuple[TierPool, ...] = ()
        rows = layer.value_rows()[name]
    elif store == "tiers":
        pools = _read_tiers(entry, dim, tensors, declared)
        rows = sum(p.rows for p in pools)
    else:
        raise CheckpointError(f"field {name!r} has store {store!r}; expected 'tiers' or 'layer'")
    size = integrity.integer(info["size"], f"field {name!r} vocabulary size")
    keys: np.ndarray | StrKeys
    if info["key_kind"] == "int":
        keys_name = f"vocab.{k}.keys"
        keys = integrity.check_tensor(keys_name, vocab, torch.int64, (size,)).numpy()
        declared.add(keys_name)
    elif info["key_kind"] == "str":
        bytes_name, offsets_name = f"vocab.{k}.key_bytes", f"vocab.{k}.key_offsets"
        blob_size = int(vocab[bytes_name].numel()) if bytes_name in vocab else 0
        blob = integrity.check_tensor(bytes_name, vocab, torch.uint8, (blob_size,)).numpy()
        offsets_tensor = integrity.check_tensor(offsets_name, vocab, torch.int64, (size + 1,))
        integrity.check_offsets(offsets_name, offsets_tensor, len(blob))
        declared.update((bytes_name, offsets_name))
        keys = StrKeys(blob, offsets_tensor.numpy())  # no Python string per key until one is needed
    else:
        raise CheckpointError(f"field {name!r} has key kind {info['key_kind']!r}; expected 'int' or 'str'")
    oov_slot = integrity.integer(info["oov_slot"], f"field {name!r} OOV slot")
    slots_name = info.get("key_slots")
    key_slots = None
    if not slots_name:
        if rows != len(keys) + 1:
            raise CheckpointError(f"field {name!r} has {len(keys)} keys for {rows} rows")
    else:
        key_slots = vocab[slots_name].numpy() if slots_name in vocab else None
        if (key_slots is None or key_slots.shape != (len(keys),) or key_slots.dtype != np.int32
                or (len(keys) and not 0 <= int(key_slots.min()) <= int(key_slots.max()) < rows)):
            shape, dtype = (None, None) if key_slots is None else (tuple(key_slots.shape), key_slots.dtype)
            raise CheckpointError(f"field {name!r} has {len(keys)} keys and a key -> slot array of shape "
                                  f"{shape} ({dtype}) for {rows} rows")
        declared.add(slots_name)
    if not oov_slot < rows:
        raise CheckpointError(f"field {name!r} has its OOV slot {oov_slot} outside 0..{rows - 1}")
    return FieldTables(name, pools, ServingVocabulary(name, str(info["key_kind"]), keys, oov_slot, key_slots))
