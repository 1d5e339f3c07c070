"""Readers of the raw-data formats; :mod:`sharkrec.data.readers` picks one by format name."""
