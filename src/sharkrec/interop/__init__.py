"""Bring models built with other libraries (TorchRec) to sharkrec's scoring, pruning and export."""
