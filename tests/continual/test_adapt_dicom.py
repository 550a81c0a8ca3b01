"""``medattn adapt`` on a new site stored as DICOM series (labels as NIfTI beside them): its cases are read, checked
and trained on like NIfTI ones."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from tests.conftest import write_dicom_series, write_nifti
from tests.continual.conftest import LABELS, bias_case, tiny_config, write_shift_dataset


def test_adapt_reads_a_dicom_site(model_a: Path, tmp_path: Path) -> None:
    from medattn.continual.adapt import adapt
    from medattn.data.importers import load_dataset

    manifest_path = write_shift_dataset(tmp_path / "data", {"A": (0, False)}, make_case=bias_case)
    doc = json.loads(manifest_path.read_text())
    cases = []
    for i in range(6):
        image, label = bias_case(1000 + i, True)
        write_dicom_series(tmp_path / "data" / "B" / f"B_{i}", np.round(image * 1000).astype(np.int16), np.eye(4))
        write_nifti(tmp_path / "data" / "B" / f"B_{i}_seg.nii.gz", label, np.eye(4))
        cases.append({"id": f"B_{i}", "images": [f"B/B_{i}"], "label": f"B/B_{i}_seg.nii.gz"})
    ids = [c["id"] for c in cases]
    doc["domains"].append({"name": "B", "cases": cases, "splits": {"train": ids[:4], "test": ids[4:]}})
    assert doc["labels"] == LABELS
    manifest_path.write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = adapt(model_a, load_dataset(str(manifest_path)), tmp_path / "run", tiny_config(epochs=2), quiet=True)
    grid = result.runs["naive"].matrix.matrix()
    assert grid.shape == (2, 2) and np.isfinite(grid).all()
    assert not (grid[1] == grid[0]).all()  # B was trained on: the model changed
