"""The method registry: a method is one file in ``medattn/continual/methods/``, and the command line, the
configuration and the ``methods:`` section of ``pipelines/adapt.yaml`` follow from the files found there."""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.continual.conftest import tiny_config

PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "adapt.yaml"
SHIPPED = ("naive", "joint", "cumulative", "replay", "ewc", "si", "lwf", "mib", "selftrain")

#: A method as a newcomer would add it: one file, nothing else.
SCALED = '''
"""Scale the segmentation loss by a constant (a test method: factor 0 must leave the weights untouched)."""

from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin

from medattn.continual.methods import Method, MethodSpec, Param
from medattn.errors import ConfigError


class ScaleLoss(SupervisedPlugin):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.steps = 0

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        strategy.loss = strategy.loss * self.factor
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


def build(params, context):
    factor = float(params["factor"])
    if factor < 0:
        raise ConfigError(f"scaled: factor must be >= 0, got {factor}")
    return MethodSpec(name="scaled", plugins=[ScaleLoss(factor)], params=dict(params))


METHOD = Method(
    name="scaled",
    description="scale the segmentation loss (a test method)",
    params=(Param("factor", 1.0, "loss multiplier"), Param("note", None, "unused; shows null in the template")),
    build=build,
)
'''


def yaml_mismatches(shipped: Mapping[str, Any], registry: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What differs between the YAML's ``methods:`` section and the registry's defaults, one line each."""
    problems = [f"{name}: missing from the YAML" for name in registry if name not in shipped]
    problems += [f"{name}: in the YAML but not a method file" for name in shipped if name not in registry]
    for name in registry.keys() & shipped.keys():
        if dict(shipped[name] or {}) != dict(registry[name]):
            problems.append(f"{name}: YAML {dict(shipped[name] or {})} != defaults {dict(registry[name])}")
    return problems


def _registry_defaults() -> dict[str, dict[str, Any]]:
    from medattn.continual.methods import defaults, method_names

    return {name: defaults(name) for name in method_names()}


def _check_pipeline(path: Path = PIPELINE) -> None:
    problems = yaml_mismatches(yaml.safe_load(path.read_text())["methods"], _registry_defaults())
    assert not problems, (
        f"{path.name}'s methods section is not the registry's defaults:\n  "
        + "\n  ".join(problems)
        + "\nregenerate it: `medattn adapt --print-template` prints the section from medattn/continual/methods/; "
        "copy the changed methods into pipelines/adapt.yaml (keep the measured comments)"
    )


# ---- the shipped methods -------------------------------------------------------------------------------------------


def test_the_shipped_yaml_methods_section_is_the_registry_template() -> None:
    from medattn.continual.methods import methods_template

    _check_pipeline()
    assert yaml.safe_load(methods_template())["methods"] == _registry_defaults()


def test_every_method_file_declares_its_name_options_and_docs() -> None:
    from medattn.continual import methods

    names = methods.method_names()
    assert set(SHIPPED) <= set(names) and names == methods.METHODS
    assert "_params" not in names  # private helpers are not methods
    for name in names:
        spec = methods.method(name)
        assert spec.name == name and spec.description
        assert all(p.doc for p in spec.params), f"{name}: every option needs its one-line doc"
        assert methods.defaults(name) == {p.name: p.default for p in spec.params}
    assert methods.defaults("ewc") == {"ewc_lambda": 1.0e6, "mode": "separate", "decay_factor": None}
    assert methods.defaults("replay") == {
        "mem_size": None,
        "memory_fraction": 0.1,
        "mem_batch": None,
        "min_patches_per_domain": 16,
    }


def test_listing_the_methods_imports_none_of_them() -> None:
    import subprocess

    code = (
        "import sys\n"
        "from medattn.continual.methods import method_names\n"
        "names = method_names()\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('medattn.continual.methods.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_template_writes_defaults_as_yaml_scalars() -> None:
    from medattn.continual.methods import _yaml_value

    for value, text in [(1.0e5, "1.0e+5"), (1e-7, "1.0e-7"), (2.5e-4, "2.5e-4"), (0.1, "0.1"), (4.0, "4.0")]:
        assert _yaml_value(value) == text and yaml.safe_load(text) == value
    for value in [None, True, 3, "separate", [1.0, 2.0], 0.0, -3e6, "1e5"]:
        assert yaml.safe_load(_yaml_value(value)) == value, value


# ---- adding a method is adding its file ----------------------------------------------------------------------------


@pytest.fixture
def method_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second folder of ``medattn.continual.methods`` (as if its files were in the package); its modules are
    forgotten afterwards."""
    from medattn.continual import methods

    folder = tmp_path / "more_methods"
    folder.mkdir()
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("medattn.continual.methods."):
            del sys.modules[name]
            if hasattr(methods, name.rsplit(".", 1)[1]):
                delattr(methods, name.rsplit(".", 1)[1])


def _add(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


def _adapt_parser() -> Any:
    import argparse

    from medattn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["adapt"]


def test_a_new_method_file_is_listed_configured_templated_and_run(
    method_folder: Path, shift_manifest: Path, start_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from medattn.continual.adapt import adapt
    from medattn.continual.config import AdaptConfig
    from medattn.continual.methods import METHODS, methods_template, resolve_params
    from medattn.data.importers import load_dataset
    from medattn.errors import ConfigError

    assert "scaled" not in METHODS
    _add(method_folder, "scaled", SCALED)

    # the command line lists it, for --strategy and --strategies
    helps = {a.dest: a.help for a in _adapt_parser()._actions}
    assert "scaled" in helps["strategy"] and "scaled" in helps["strategies"]
    # the configuration accepts it and resolves its options over the declared defaults
    assert resolve_params("scaled", {"factor": 0.5}) == {"factor": 0.5, "note": None}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['fator'\]; known: \['factor', 'note'\]"):
        AdaptConfig(strategies="naive,scaled", methods={"scaled": {"fator": 0.0}})
    # the template holds it (what --print-template prints), and the shipped YAML is now stale, saying how to fix it
    with pytest.raises(SystemExit) as done:
        _adapt_parser().parse_args(["--print-template"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed == methods_template()
    assert yaml.safe_load(printed)["methods"]["scaled"] == {"factor": 1.0, "note": None}
    assert "  scaled:                   # scale the segmentation loss (a test method)\n" in printed
    assert "    factor: 1.0             # loss multiplier\n" in printed
    with pytest.raises(AssertionError, match=r"(?s)scaled: missing from the YAML.*medattn adapt --print-template"):
        _check_pipeline()

    # it builds and runs one experience through the Avalanche loop; factor 0 is honoured: the weights stay
    cfg = tiny_config(strategies="scaled", methods={"scaled": {"factor": 0.0}}, weight_decay=0.0, eval_before=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = adapt(start_model, load_dataset(f"{shift_manifest}:A"), tmp_path / "run", cfg, quiet=True)
    run = result.runs["scaled"]
    assert run.finished and run.matrix.matrix().shape == (1, 1)
    state = torch.load(tmp_path / "run" / "scaled" / "state.pt", map_location="cpu", weights_only=True)
    assert state["strategy"]["plugins"]["ScaleLoss"]["steps"] > 0  # the plugin's hook ran in the loop
    before = torch.load(start_model, map_location="cpu", weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "run" / "scaled" / "00_A" / "model.pt", map_location="cpu", weights_only=True)
    for key, value in before.items():
        torch.testing.assert_close(after["state_dict"][key], value)


def test_a_method_file_that_declares_no_method_or_another_name_is_refused(method_folder: Path) -> None:
    from medattn.continual.methods import method
    from medattn.errors import ConfigError

    _add(method_folder, "nothing", "X = 1\n")
    _add(method_folder, "misnamed", SCALED)
    with pytest.raises(ConfigError, match=r"nothing\.py: a method module must define METHOD = Method"):
        method("nothing")
    with pytest.raises(ConfigError, match=r"misnamed\.py: METHOD\.name is 'scaled'; it must be .* 'misnamed'"):
        method("misnamed")
    with pytest.raises(ConfigError, match=r"unknown continual-learning method 'gem'; available: .*misnamed"):
        method("gem")
