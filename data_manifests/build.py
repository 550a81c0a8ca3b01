"""Rebuild the manifests in this folder from the datasets in a data root (default ../shared/data).

    python data_manifests/build.py [DATA_ROOT]

Case paths are relative to the data root (e.g. ``Task04_Hippocampus/imagesTr/...``), and each manifest's ``root``
points at ``../../shared/data`` relative to this folder, which is where the data live on the development machines.
Elsewhere, pass ``--data-root /path/to/data`` to any command.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

from medattn.data.importers import load_dataset
from medattn.data.manifest import Case, Channel, Domain, Manifest

HERE = Path(__file__).resolve().parent


def rebase(m: Manifest, prefix: str, data_root: Path) -> Manifest:
    """Prefix every case path so it is relative to ``data_root`` instead of the dataset folder."""
    domains = tuple(
        replace(
            d,
            cases=tuple(
                replace(
                    c, images=tuple(f"{prefix}/{p}" for p in c.images), label=f"{prefix}/{c.label}" if c.label else None
                )
                for c in d.cases
            ),
        )
        for d in m.domains
    )
    return replace(m, domains=domains, base_dir=data_root, root=None)


def split(ids: list[str], test_fraction: float, val_fraction: float, seed: int = 0) -> dict[str, tuple[str, ...]]:
    """Deterministic train/val/test split: the sorted ids shuffled with ``seed``; the first
    ``round(test_fraction * n)`` (at least one) are the test set, the next ``round(val_fraction * n)`` (at least
    one when two or more remain) validate, the rest train.

    The test set is the one the earlier train/test split (same shuffle, same ``test_fraction``) gave, so test figures
    stay comparable; validation is carved from what was its train split. The test split never trains, never picks a
    checkpoint and never enters the plan.
    """
    ids = sorted(ids)
    random.Random(seed).shuffle(ids)
    n_test = max(1, round(len(ids) * test_fraction))
    n_val = 0 if len(ids) - n_test < 2 else max(1, round(len(ids) * val_fraction))
    return {
        "train": tuple(sorted(ids[n_test + n_val :])),
        "val": tuple(sorted(ids[n_test : n_test + n_val])),
        "test": tuple(sorted(ids[:n_test])),
    }


def describe_splits(domains: tuple[Domain, ...]) -> str:
    """ "CBICA 4 train / 1 val / 2 test, TCIA ..." for a manifest description."""
    return ", ".join(
        (f"{d.name} " if len(domains) > 1 else "")
        + " / ".join(f"{len(d.splits[k])} {k}" for k in ("train", "val", "test"))
        for d in domains
    )


def main(data_root: Path) -> None:
    data_root = data_root.resolve()
    out: dict[str, Manifest] = {}

    hip = rebase(load_dataset(data_root / "Task04_Hippocampus"), "Task04_Hippocampus", data_root)
    d = hip.domains[0]
    hip_domains = (
        replace(
            d,
            name="vumc",
            metadata={**d.metadata, "institution": "Vanderbilt University Medical Center"},
            splits=split([c.id for c in d.cases], 0.2, 0.1),
        ),
    )
    hip = replace(
        hip,
        labels={0: "background", 1: "anterior", 2: "posterior"},
        domains=hip_domains,
        description="MSD Task04 hippocampus (subset of 208 training cases). Fixed split, seed 0: "
        f"{describe_splits(hip_domains)}. The test cases are those of the earlier 80/20 split; validation "
        "(picks the checkpoint) was carved from its training cases.",
    )
    out["hippocampus.json"] = hip

    brats = rebase(load_dataset(data_root / "BraTS2018_sites", label_name="GT_W"), "BraTS2018_sites", data_root)
    brats_domains = tuple(
        replace(dd, metadata={"institution": dd.name}, splits=split([c.id for c in dd.cases], 0.3, 0.1))
        for dd in brats.domains
    )
    brats = replace(
        brats,
        name="BraTS2018_sites",
        labels={0: "background", 1: "whole_tumour"},
        domains=brats_domains,
        description="BraTS 2018 whole tumour; domains are the acquiring institutions (CBICA, TCIA). Fixed split per "
        f"site, seed 0: {describe_splits(brats_domains)}. The test cases are those of the earlier 70/30 split; "
        "one validation case per site was carved from its training cases.",
    )
    out["brats_sites.json"] = brats

    sct = load_dataset(data_root / "SpinalCord_contrasts" / "sct_example_data")
    bids = load_dataset(data_root / "SpinalCord_contrasts", domain_from="suffix")
    sct_cases = {dd.name: [c for c in dd.cases if "uncropped" not in c.id] for dd in sct.domains}
    bids_cases = {dd.name: list(dd.cases) for dd in bids.domains}

    def cord(c: Case, prefix: str) -> Case:
        return replace(c, images=tuple(f"{prefix}/{p}" for p in c.images), label=f"{prefix}/{c.label}")

    contrasts = [("t1", "t1", "T1w"), ("t2", "t2", "T2w"), ("t2s", "t2s", "T2star"), ("mt", "mt", None)]
    sc_domains = []
    for name, sct_dom, bids_suffix in contrasts:
        cases = [cord(c, "SpinalCord_contrasts/sct_example_data") for c in sct_cases.get(sct_dom, [])]
        if bids_suffix:
            cases += [cord(c, "SpinalCord_contrasts") for c in bids_cases.get(bids_suffix, [])]
        sc_domains.append(Domain(name, tuple(cases), {"contrast": name}))
    out["spinalcord.json"] = Manifest(
        name="SpinalCord_contrasts",
        channels=(Channel("MRI", "MR"),),
        labels={0: "background", 1: "spinal_cord"},
        domains=tuple(sc_domains),
        base_dir=data_root,
        description="Spinal cord masks in four contrasts (domain = contrast): sct_example_data (MIT) and "
        "spine-generic sub-unf01 (CC-BY 4.0).",
    )

    spleen = rebase(load_dataset(data_root / "Abdomen_CT_MR" / "spleen_ct"), "Abdomen_CT_MR/spleen_ct", data_root)
    out["spleen_ct.json"] = replace(
        spleen,
        labels={0: "background", 1: "spleen"},
        channels=(Channel("CT", "CT"),),
        description="MSD Task09 spleen_2, cropped, BIDS layout.",
    )

    for key, img, seg, values in [
        (
            "ct",
            "example_ct_sm",
            "example_seg",
            [
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                13,
                14,
                18,
                19,
                20,
                30,
                31,
                32,
                33,
                52,
                63,
                64,
                79,
                86,
                87,
                88,
                89,
                98,
                99,
                100,
                101,
                102,
                103,
                110,
                111,
                112,
                113,
                114,
                115,
                117,
            ],
        ),
        (
            "mr",
            "example_mr_sm",
            "example_seg_mr",
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 19, 20, 21, 23, 24, 25, 46, 47, 48, 49],
        ),
    ]:
        # TotalSegmentator's CT and MR models number their classes differently, so each is its own dataset.
        # Only the values present are declared; names are the model's class indices.
        labels = {0: "background", **{v: f"class_{v}" for v in values}}
        case = Case(f"abdomen_{key}", (f"Abdomen_CT_MR/{img}.nii.gz",), f"Abdomen_CT_MR/{seg}.nii.gz")
        out[f"abdomen_{key}.json"] = Manifest(
            name=f"Abdomen_{key.upper()}",
            channels=(Channel(key.upper(), key.upper()),),
            labels=labels,
            domains=(Domain(key, (case,)),),
            base_dir=data_root,
            description="TotalSegmentator test reference (labels produced by a model, not drawn by hand).",
        )

    for fname, m in out.items():
        # Saving re-roots the manifest relative to this folder; rewrite to the conventional ../../shared/data.
        doc_root = "../../shared/data"
        m = replace(m, base_dir=(HERE / doc_root).resolve() if (HERE / doc_root).exists() else data_root)
        m.save(HERE / fname)
        print(f"{fname}: {m.num_cases} cases, domains {[(dd.name, len(dd.cases)) for dd in m.domains]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data")
