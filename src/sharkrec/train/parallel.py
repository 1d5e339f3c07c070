"""Data-parallel training steps under torchrun: DDP for the dense network, gathered sparse rows for tables.

Scheme (per step, every rank on its own shard with the same per-process batch B; global batch W·B):

- dense parameters (bottom MLP, interaction, head): :class:`~torch.nn.parallel.DistributedDataParallel`,
  which averages their gradients over the W ranks while ``backward`` runs;
- embedding tables (sparse COO gradients, kept out of DDP): every rank all-gathers the touched rows'
  indices and gradient values, sums duplicates and divides by W (the gradient of the global mean
  loss), so all ranks apply the same sparse update — O(rows touched), never O(table size). NCCL has
  no sparse all-reduce, which is why the tables are not left to DDP;
- layers that keep gradients outside their parameters (mixed-precision tables: the rows of the last
  forward pass) synchronise them in :meth:`~sharkrec.model.embedding.FieldEmbedding.sync_gradients`;
  every rank then updates the union of rows. Stochastic rounding
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
from sharkrec.model.embedding import layers


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
        for layer in layers(model.embedding):
            if not layer.trains_data_parallel:
                raise ConfigError(f"the {layer.kind} embedding trains in one process only: "
                                  f"{layer.single_process_reason}")
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
        no_sync: dict[str, Any] = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        self.ddp = DistributedDataParallel(wrapper, **no_sync)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Field vectors (B, F, D) and logits (B, T) through DDP (dense gradients averaged in backward)."""
        return self.ddp(batch)

    @torch.no_grad()
    def sync_tables(self) -> None:
        """Replace every table gradient by the mean over ranks (call after backward, before the step).

        All tables of one row width travel together: one gather of (row id, gradient) pairs per step,
        not one per table (26 tables x 3 collectives made 2 processes 4x slower than one).
        """
        embedding = self.model.embedding
        sparse_ids = {id(p) for p in embedding.sparse_parameters()}  # the same on every rank
        groups: dict[tuple[int, ...], list[nn.Parameter]] = {}
        for param in embedding.parameters():
            if id(param) in sparse_ids:
                groups.setdefault(tuple(param.shape[1:]), []).append(param)
            else:  # a dense-gradient parameter of the layer (rare): plain all-reduce
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                param.grad = distributed.all_reduce_sum(grad)[0] / self.world
        for shape in sorted(groups):
            self._sync_sparse(groups[shape])
        for layer in layers(embedding):  # e.g. mixed precision: the rows read in the last forward pass
            layer.sync_gradients(self.world)

    def _sync_sparse(self, params: list[nn.Parameter]) -> None:
        """Sparse gradients of tables (R_i, *S) → their mean over ranks, in one gather for all of them."""
        bases, rows, values = [0], [], []
        for param in params:
            grad = param.grad
            if grad is None:
                rows.append(torch.zeros(0, dtype=torch.int64))
                values.append(param.new_zeros((0, *param.shape[1:])))
            else:
                grad = grad.coalesce()
                rows.append(grad.indices()[0] + bases[-1])
                values.append(grad.values())
            bases.append(bases[-1] + int(param.shape[0]))
        all_rows, summed = distributed.sum_rows(torch.cat(rows), torch.cat(values))
        starts = torch.searchsorted(all_rows, torch.tensor(bases)).tolist()
        for i, param in enumerate(params):
            own = all_rows[starts[i]:starts[i + 1]] - bases[i]
            param.grad = torch.sparse_coo_tensor(own.unsqueeze(0), summed[starts[i]:starts[i + 1]] / self.world,
                                                 param.shape, is_coalesced=True, check_invariants=False)
