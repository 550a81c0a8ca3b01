"""The manifest as an Avalanche benchmark, and the collate adapter between MONAI samples and Avalanche batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.continual.conftest import PATCH, SIZE


@pytest.fixture(scope="module")
def bench_and_manifest(shift_manifest: Path):  # type: ignore[no-untyped-def]
    from medattn.continual.scenario import ScenarioOptions, domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.data.plan import make_plan
    from medattn.data.transforms import AugmentConfig

    manifest = load_dataset(f"{shift_manifest}:B,A")  # the user's order, not the manifest's
    plan = make_plan(manifest)
    opts = ScenarioOptions(patch_size=PATCH, samples_per_volume=3, augment=AugmentConfig.none())
    return domain_scenario(manifest, plan, opts), manifest


def test_one_avalanche_experience_per_domain_in_the_given_order(bench_and_manifest) -> None:  # type: ignore[no-untyped-def]
    from avalanche.benchmarks import CLScenario, DatasetExperience
    from avalanche.benchmarks.utils import AvalancheDataset

    bench, _ = bench_and_manifest
    assert isinstance(bench, CLScenario)
    for stream, split, n in ((bench.train_stream, "train", 4), (bench.test_stream, "test", 2)):
        assert [e.domain for e in stream] == ["B", "A"]
        assert [e.current_experience for e in stream] == [0, 1]
        for exp in stream:
            assert isinstance(exp, DatasetExperience) and isinstance(exp.dataset, AvalancheDataset)
            assert exp.split == split and len(exp.dataset) == n and exp.task_label == 0
    assert bench.train_stream[1].case_ids == ("A_0", "A_1", "A_2", "A_3")
    assert bench.test_stream[1].case_ids == ("A_4", "A_5")


def test_train_batches_follow_avalanche_conventions(bench_and_manifest) -> None:  # type: ignore[no-untyped-def]
    from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader

    from medattn.continual.collate import SegBatch

    bench, _ = bench_and_manifest
    exp = bench.train_stream[1]
    exp.seed(0)
    loader = TaskBalancedDataLoader(exp.dataset.train(), batch_size=2, oversample_small_groups=True)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert isinstance(batch, SegBatch)
    x, y, t = batch[0], batch[1], batch[-1]  # mb_x, mb_y, mb_task_id
    assert x.shape == (6, 1, *PATCH) and x.dtype == torch.float32  # 2 volumes x 3 samples
    assert y.shape == (6, 1, *PATCH) and set(torch.unique(y).tolist()) <= {0.0, 1.0, 2.0}
    assert t.tolist() == [0] * 6
    assert type(x) is torch.Tensor  # MONAI's MetaTensor is stripped
    assert batch.meta["domain"] == ["A"] * 6
    ids = batch.meta["case_id"]
    assert len(set(ids)) == 2 and all(ids.count(i) == 3 for i in set(ids))
    # free-form metadata differs between cases (odd cases have keys, even ones none): kept per patch, not collated
    for case_id, meta in zip(ids, batch.meta["metadata"]):
        index = int(case_id.split("_")[1])
        assert meta == ({"Manufacturer": "Acme", "index": index} if index % 2 else {})


def test_seeding_an_experience_reproduces_its_patches(bench_and_manifest) -> None:  # type: ignore[no-untyped-def]
    bench, _ = bench_and_manifest
    exp = bench.train_stream[0]
    exp.seed(7)
    first = exp.dataset[0]["samples"][0]["image"]
    exp.seed(7)
    again = exp.dataset[0]["samples"][0]["image"]
    torch.testing.assert_close(first, again)
    cached = exp.volumes[0]["image"].clone()
    for _ in range(3):
        exp.dataset[0]
    torch.testing.assert_close(exp.volumes[0]["image"], cached)  # patches never write into the cache


def test_test_experiences_hold_whole_volumes(bench_and_manifest) -> None:  # type: ignore[no-untyped-def]
    from medattn.continual.collate import collate_segmentation

    bench, _ = bench_and_manifest
    ds = bench.test_stream[0].dataset.eval()
    batch = collate_segmentation([ds[0]])
    assert batch[0].shape == (1, 1, SIZE, SIZE, SIZE)
    assert batch.meta["case_id"] == ["B_4"]
    with pytest.raises(ValueError, match="no label"):
        collate_segmentation([{"image": torch.zeros(1, 4, 4, 4), "case_id": "x"}])


def test_split_without_manifest_splits_is_deterministic(shift_manifest: Path) -> None:
    from dataclasses import replace

    from medattn.continual.scenario import domain_split
    from medattn.data.importers import load_dataset

    manifest = load_dataset(str(shift_manifest))
    bare = replace(manifest, domains=tuple(replace(d, splits={}) for d in manifest.domains))
    train, test = domain_split(bare, "A", test_fraction=0.25)
    assert test == ["A_4", "A_5"] and train == ["A_0", "A_1", "A_2", "A_3"]


def test_the_manifests_test_cases_never_train_whatever_splits_the_domain_lacks(shift_manifest: Path) -> None:
    """A domain with a test split but no train split trains on the other cases; scored on val, or split by
    fraction, its test cases still never train (nor feed label-free methods as unlabelled images)."""
    from dataclasses import replace

    from medattn.continual.scenario import domain_split, unlabelled_ids
    from medattn.data.importers import load_dataset

    manifest = load_dataset(str(shift_manifest))
    only_test = replace(manifest, domains=tuple(replace(d, splits={"test": ("A_0", "A_1")}) for d in manifest.domains))
    train, test = domain_split(only_test, "A")
    assert test == ["A_0", "A_1"] and sorted(train) == ["A_2", "A_3", "A_4", "A_5"]
    # scored on val that the domain lacks: split by fraction among the cases outside its test split
    train, test = domain_split(only_test, "A", test_split="val", test_fraction=0.25)
    assert not {"A_0", "A_1"} & set(train + test) and len(test) == 1 and len(train) == 3
    # unlabelled test images are not a label-free method's to learn from
    a = only_test.domains[0]
    bare = replace(a, cases=tuple(replace(c, label=None) if c.id in ("A_0", "A_4") else c for c in a.cases))
    unl = replace(only_test, domains=(bare, *only_test.domains[1:]))
    assert unlabelled_ids(unl, "A") == ["A_4"]


def test_channel_mismatch_is_a_data_error(shift_manifest: Path) -> None:
    from dataclasses import replace

    from medattn.continual.scenario import domain_scenario
    from medattn.data.importers import load_dataset
    from medattn.data.manifest import Channel
    from medattn.data.plan import make_plan
    from medattn.errors import DataError

    manifest = load_dataset(str(shift_manifest))
    plan = make_plan(manifest)
    two = replace(manifest, channels=(Channel("T1"), Channel("T2")))
    with pytest.raises(DataError, match="channel"):
        domain_scenario(two, plan)
