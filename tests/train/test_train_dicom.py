"""``medattn train`` on a dataset whose images are DICOM series folders (labels: NIfTI files beside them), imported
from the folder layout alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from medattn.cli import main
from tests.conftest import blob_case, write_dicom_series, write_nifti
from tests.train.test_train_generated import SHAPE, TINY


def test_training_reads_dicom_series_cases_with_labels_beside_them(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # an LPS-stored axial series: the labels are written on the same grid
    aff[:3, 3] = [40.0, 30.0, -5.0]
    for i in range(6):
        image, label = blob_case(SHAPE, seed=i)
        write_dicom_series(root / f"patient{i}" / "t1", np.round(image * 500).astype(np.int16), aff)
        write_nifti(root / f"patient{i}" / "t1_seg.nii.gz", (label > 0).astype(np.uint8), aff)  # labels 0, 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    assert main(["train", str(root), "--out", str(run), "--config", str(config), "--quiet"]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert sorted(plan["median_shape"]) == sorted(SHAPE)
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) + len(split.get("val", [])) == 6
    assert (run / "model.pt").is_file()
