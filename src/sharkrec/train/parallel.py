"""Data-parallel training steps under torchrun: DDP for the dense network, gathered sparse rows for tables.

Scheme (per step, every rank on its own shard with the same per-process batch B; global batch W·B):

- dense parameters (bottom MLP, interaction, head): :class:`~torch.nn.parallel.DistributedDataParallel`,
  which averages their gradients over the W ranks while ``backward`` runs;
- embedding tables (sparse COO gradients, kept out of DDP): every rank all-gathers the touched rows'
  indices and gradient values, sums duplicates and divides by W (the gradient of the global mean
  loss), so all ranks apply the same sparse update — O(rows touched), never O(table size). NCCL has
  no sparse all-reduce, which is why the tables are not left to DDP;
- mixed-precision tables (:class:`~sharkrec.quant.embedding.MixedPrecisionEmbedding`): the same for
  the rows of the last forward pass; then every rank updates the union of rows. Stochastic rounding
  draws from torch's global generator, which all ranks seed and consume identically, so the stored
  rows stay bit-identical (``tests/test_distributed.py`` checks it).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sharkrec import distributed
from sharkrec.data.batch import Batch
from sharkrec.errors import ConfigError


class _FieldsAndLogits(nn.Module):
    """What DDP wraps: batch → field vectors (B, F, D) and logits (B, T) of the model."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        vectors = self.model.field_vectors(batch)  # (B, F, D)
        return vectors, self.model.logits_from_fields(vectors)  # (B, T)


class DataParallel:
    """One model replica per rank; call :meth:`forward`, ``loss.backward()``, :meth:`sync_tables`, then step."""

    def __init__(self, model: Any) -> None:
        from sharkrec.quant.alpt import ALPTEmbedding

        if isinstance(model.embedding, ALPTEmbedding):
            raise ConfigError("ALPT trains in one process only; run it without torchrun or pick f-quant")
        self.model = model
        self.world = distributed.world_size()
        wrapper = _FieldsAndLogits(model)
        ignored = [f"model.{name}" for name, _ in model.named_parameters() if name.startswith("embedding.")]
        ignored += [f"model.{name}" for name, _ in model.named_buffers() if name.startswith("embedding.")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(wrapper, ignored)
        with torch.no_grad():  # tables are seeded identically; make sure they start bit-identical
            for tensor in [*model.embedding.parameters(), *model.embedding.buffers()]:
                distributed.broadcast(tensor.data)
        # the network's buffers (pair index) are constants: no sync per forward (torch 2.13 renamed the flag)
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync: dict[str, bool] = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        self.ddp = DistributedDataParallel(wrapper, **no_sync)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Field vectors (B, F, D) and logits (B, T) through DDP (dense gradients averaged in backward)."""
        return self.ddp(batch)

    @torch.no_grad()
    def sync_tables(self) -> None:
        """Replace every table gradient by the mean over ranks (call after backward, before the step)."""
        embedding = self.model.embedding
        for param in embedding.parameters():
            if param.grad is None:
                param.grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64),
                                                     param.new_zeros((0, *param.shape[1:])), param.shape,
                                                     check_invariants=False)
            if param.grad.is_sparse:
                grad = param.grad.coalesce()
                rows, values = distributed.sum_rows(grad.indices()[0], grad.values())
                param.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values / self.world, param.shape,
                                                     is_coalesced=True, check_invariants=False)
            else:
                (total,) = distributed.all_reduce_sum(param.grad)
                param.grad = total / self.world
        from sharkrec.quant.embedding import MixedPrecisionEmbedding

        for module in embedding.modules():  # the layer itself, or the kept tables of a pruned layer
            if isinstance(module, MixedPrecisionEmbedding):
                self._sync_touched(module, module._touched)

    def _sync_touched(self, embedding: Any, touched: list[tuple[int, Tensor, Tensor]]) -> None:
        """Mixed precision: the union of every rank's touched rows with their mean gradients (per field)."""
        by_field = {field: (rows, leaf) for field, rows, leaf in touched}
        merged = []
        for field in range(embedding.num_fields):  # every rank walks every field: collectives stay aligned
            rows, leaf = by_field.get(field, (torch.zeros(0, dtype=torch.int64), None))
            grad = leaf.grad if leaf is not None and leaf.grad is not None else None
            if grad is None:
                grad = torch.zeros(rows.shape[0], embedding.embedding_dim)
            all_rows, all_grads = distributed.sum_rows(rows, grad)
            if all_rows.numel() == 0:
                continue
            groups = embedding.tier_groups(field, all_rows)
            values = embedding.read_rows(field, all_rows, groups)  # (U, D): identical on every rank
            values.grad = all_grads / self.world
            embedding._groups[field] = groups
            merged.append((field, all_rows, values))
        embedding._touched = merged

