"""A small ad-click log shaped like Avazu (24 columns), built in code, and a split folder cut from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)
# what `sharkrec schema` should make of each column (id is left out)
DENSE = ("C14", "C21")
SPARSE = tuple(c for c in COLUMNS if c not in ("id", "click", *DENSE))


def _hex_values(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.array([f"{v:08x}" for v in rng.choice(2**32, size, replace=False)], dtype=object)


def _zipf_pick(rng: np.random.Generator, values: np.ndarray, rows: int) -> np.ndarray:
    """Values drawn with Zipf-like frequencies (value k has weight 1 / (k + 1))."""
    weights = 1.0 / np.arange(1, len(values) + 1)
    return values[rng.choice(len(values), rows, p=weights / weights.sum())]


def avazu_rows(rows: int = 3000, seed: int = 0) -> list[list[str]]:
    """Rows of cells (strings) in COLUMNS order; ``click`` depends on site_category, device_type and C21.

    Cardinalities: id all distinct (20-digit ints); hour 24 (YYMMDDHH); C14 ~hundreds of ints of
    3..5 digits; C21 continuous floats; every other column a few to a few hundred values.
    """
    rng = np.random.default_rng(seed)
    cells: dict[str, np.ndarray] = {}
    cells["id"] = np.array([str(10**19 + int(v)) for v in rng.choice(10**15, rows, replace=False)], dtype=object)
    cells["hour"] = (14102100 + rng.integers(0, 24, rows)).astype(str)
    cells["C1"] = rng.choice(np.array(["1005", "1002", "1010", "1007"]), rows, p=[0.9, 0.05, 0.03, 0.02])
    cells["banner_pos"] = rng.choice(np.array(["0", "1", "2", "7"]), rows, p=[0.7, 0.25, 0.03, 0.02])
    for name, size in (("site_id", 200), ("site_domain", 150), ("site_category", 12), ("app_id", 150),
                       ("app_domain", 40), ("app_category", 15), ("device_model", 300)):
        cells[name] = _zipf_pick(rng, _hex_values(rng, size), rows)
    device_id = _hex_values(rng, 1500)
    cells["device_id"] = np.where(rng.random(rows) < 0.8, "a99f214a", device_id[rng.integers(0, 1500, rows)])
    cells["device_ip"] = _hex_values(rng, 2500)[rng.integers(0, 2500, rows)]  # repeats: not an id
    cells["device_type"] = rng.choice(np.array(["1", "0", "4", "5"]), rows, p=[0.9, 0.05, 0.03, 0.02])
    cells["device_conn_type"] = rng.choice(np.array(["0", "2", "3", "5"]), rows, p=[0.85, 0.08, 0.05, 0.02])
    cells["C14"] = _zipf_pick(rng, rng.choice(np.arange(375, 24053), 600, replace=False), rows).astype(str)
    cells["C15"] = rng.choice(np.array(["320", "300", "216", "728"]), rows, p=[0.9, 0.06, 0.02, 0.02])
    cells["C16"] = rng.choice(np.array(["50", "250", "36", "480", "90"]), rows, p=[0.9, 0.05, 0.02, 0.02, 0.01])
    cells["C17"] = _zipf_pick(rng, rng.choice(np.arange(100, 3000), 60, replace=False), rows).astype(str)
    cells["C18"] = rng.integers(0, 4, rows).astype(str)
    cells["C19"] = _zipf_pick(rng, np.array([35, 39, 167, 161, 47, 1071, 33, 43, 175, 37, 171, 297]), rows).astype(str)
    c20 = np.array([-1, *(100000 + rng.choice(300, 30, replace=False))])
    cells["C20"] = _zipf_pick(rng, c20, rows).astype(str)
    c21 = rng.lognormal(0.0, 1.0, rows)
    cells["C21"] = np.array([f"{v:.4f}" for v in c21], dtype=object)
    category_effect = rng.normal(0.0, 1.5, 12)
    category = np.searchsorted(np.unique(cells["site_category"]), cells["site_category"])
    logit = -1.5 + category_effect[category] + 0.8 * (np.log(c21)) + (cells["device_type"] == "1") * 0.5
    cells["click"] = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(int).astype(str)
    return [[str(cells[name][i]) for name in COLUMNS] for i in range(rows)]


def write_split_folder(folder: Path, rows: int = 3000, seed: int = 0, dev_header: str | None = None) -> Path:
    """``train.csv`` (a header line, 80% of the rows) + ``dev.csv`` and ``test.csv`` (10% each, no header).

    ``dev_header`` puts that line on top of dev.csv (a header that may differ from train's).
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(row) + "\n" for row in avazu_rows(rows, seed)]
    cut_valid, cut_test = int(rows * 0.8), int(rows * 0.9)
    (folder / "train.csv").write_text(",".join(COLUMNS) + "\n" + "".join(lines[:cut_valid]), encoding="utf-8")
    dev = "" if dev_header is None else dev_header + "\n"
    (folder / "dev.csv").write_text(dev + "".join(lines[cut_valid:cut_test]), encoding="utf-8")
    (folder / "test.csv").write_text("".join(lines[cut_test:]), encoding="utf-8")
    return folder
