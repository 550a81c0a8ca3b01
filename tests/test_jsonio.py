"""The one JSON encoder: NumPy, paths, tuples and dataclasses to plain JSON; each non-finite convention."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medattn.jsonio import dumps, to_json, write_json

DOC = {"dice": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True), "hd95": [math.inf, -math.inf, math.nan]}


def test_numpy_paths_tuples_and_keys_become_plain_json() -> None:
    @dataclass
    class Point:
        where: Path
        at: tuple[int, int]

    doc = {np.int64(1): Point(Path("/a/b"), (1, 2)), Path("k"): np.arange(3), 2: "two"}
    assert json.loads(dumps(doc)) == {"1": {"where": "/a/b", "at": [1, 2]}, "k": [0, 1, 2], "2": "two"}
    out = to_json(DOC)
    assert type(out["dice"]) is float and type(out["n"]) is int and out["ok"] is True


def test_each_non_finite_convention() -> None:
    assert dumps(DOC["hd95"]).split() == ["[", "Infinity,", "-Infinity,", "NaN", "]"]  # Python's json, as before
    assert to_json(DOC["hd95"], non_finite="null") == [None, None, None]  # predictions.json
    assert to_json(DOC["hd95"], non_finite="inf_string") == ["inf", "-inf", None]  # medattn evaluate
    assert to_json(np.array([1.0, np.nan]), non_finite="null") == [1.0, None]
    with pytest.raises(ValueError, match="non_finite"):
        to_json(1.0, non_finite="zero")  # type: ignore[arg-type]


def test_unknown_objects_fail_unless_a_default_converts_them(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        dumps({"x": object()})
    assert to_json({"x": object()}, default=lambda o: "obj") == {"x": "obj"}
    path = write_json(tmp_path / "sub" / "doc.json", {"a": (1, 2)}, non_finite="null")
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
