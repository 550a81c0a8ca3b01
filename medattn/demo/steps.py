"""Steps 4 to 8 of the demo (train, predict, drift, adapt, report) over the state they share.

Each step calls the library function the matching command calls (``train``, ``run_predict`` and
``evaluate_folder``, ``extract_features`` and ``analyse``, ``adapt``), reports ``[k/8] ...`` when it starts and a
one-line result with its time when it ends (through :class:`StepLog`'s ``echo``: ``medattn demo`` prints them), and
records its numbers for ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattn.demo.config import DemoConfig
from medattn.demo.data import safe_name
from medattn.errors import MedattnError
from medattn.report.demo_summary import fmt_number
from medattn.runtime import resolve_device

SUMMARY_FORMAT = "medattn-demo-summary"
#: Steps of a demo run, in order.
STEPS = ("data", "validate", "plan", "train", "predict", "drift", "adapt", "report")


@dataclass
class StepLog:
    """Reports ``[k/N] title`` when a step starts and its result with wall and CPU seconds when it ends, through
    ``echo`` (default: the ``medattn.demo`` logger at INFO level)."""

    echo: Callable[[str], None] = logging.getLogger("medattn.demo").info
    total: int = len(STEPS)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    _k: int = 0
    _name: str = ""
    _t: tuple[float, float] = (0.0, 0.0)

    def start(self, name: str, title: str) -> None:
        self._k += 1
        self._name = name
        self._t = (time.perf_counter(), time.process_time())
        self.echo(f"[{self._k}/{self.total}] {title}")

    def done(self, result: str) -> None:
        wall, cpu = time.perf_counter() - self._t[0], time.process_time() - self._t[1]
        self.timings[self._name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        self.echo(f"      {result}  ({wall:.1f} s)")


@dataclass
class DemoSteps:
    """The state the later steps share: the dataset, the trained model and what each step found."""

    cfg: DemoConfig
    out: Path
    manifest: Any
    first: str
    progress: bool
    steps: StepLog
    model_path: Path = Path()
    results: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _loaded: Any = None

    def loaded_model(self) -> Any:
        """The trained model (``model_last.pt``), loaded once for the drift step and the figures."""
        if self._loaded is None:
            from medattn.models.model_file import load_model

            self._loaded = load_model(self.model_path, device=str(resolve_device(self.cfg.device)))
        return self._loaded

    @property
    def class_names(self) -> list[str]:
        return [self.manifest.labels[k] for k in sorted(self.manifest.labels) if k != 0]

    def train(self, plan: Any) -> None:
        from medattn.train.config import TrainConfig
        from medattn.train.trainer import train

        cfg = self.cfg
        domain = self.manifest.domain(self.first)
        self.steps.start(
            "train",
            f"train {cfg.model} on scanner {self.first} ({len(domain.splits['train'])} cases, {cfg.epochs} x "
            f"{cfg.iterations} steps; validation on its {len(domain.splits.get('val', ()))} validation cases)",
        )
        config = TrainConfig(
            data=str(self.out / "data" / "manifest.json"),
            model=cfg.model,
            widths=cfg.widths,
            patch_size=cfg.patch_size,  # type: ignore[arg-type]  # validated by TrainConfig
            epochs=cfg.epochs,
            iterations=cfg.iterations,
            lr=cfg.lr,
            augment=cfg.augment_options,
            fold="fixed",
            val_every=1,
            seed=cfg.seed,
            device=cfg.device,
            workers=0,
        )
        result = train(
            config, self.manifest.select([self.first]), self.out / "runs" / "train", plan=plan, progress=self.progress
        )
        self.model_path = result.out / "model_last.pt"
        last = result.history[-1]
        self.results["train"] = {
            "model": cfg.model,
            "steps": cfg.epochs * cfg.iterations,
            "epochs": cfg.epochs,
            "train_cases": len(result.split.train),
            "final_train_loss": _round(last["train_loss"]),
            "final_val_dice": _round(last.get("val_dice")),
            "patch_size": list(result.plan.patch_size),
        }
        self.steps.done(
            f"loss {last['train_loss']:.3f}, validation Dice {fmt_number(last.get('val_dice'))} after the last epoch; "
            f"model {self.model_path}"
        )

    def predict(self) -> None:
        from medattn.evaluate.folder import evaluate_folder
        from medattn.evaluate.options import EvaluateOptions
        from medattn.infer.predict import PredictOptions, run_predict
        from medattn.jsonio import write_json

        heldout = dataclasses.replace(
            self.manifest,
            domains=tuple(
                dataclasses.replace(d, cases=tuple(c for c in d.cases if c.id in d.splits["test"]), splits={})
                for d in self.manifest.domains
            ),
        )
        spec = heldout.save(self.out / "heldout.json")
        self.steps.start(
            "predict",
            f"predict the {heldout.num_cases} held-out volumes of the {len(heldout.domains)} scanners (sliding window)",
        )
        pred_dir = self.out / "predictions"
        options = PredictOptions(window_batch=2, device=self.cfg.device, progress=self.progress)
        summary = run_predict(self.model_path, spec, pred_dir, options)
        labels = {int(k): str(v) for k, v in self.manifest.labels.items() if int(k) != 0}
        per_domain: dict[str, Any] = {}
        docs = {}
        for d in heldout.domains:
            doc = evaluate_folder(pred_dir, heldout.datalist(d.name), labels, EvaluateOptions(seed=self.cfg.seed))
            docs[d.name] = doc
            s = doc["summary"]
            per_domain[d.name] = {
                "cases": doc["num_evaluated"],
                "dice": _round(s["mean"]["dice"]["mean"]),
                "per_class": {s[str(v)]["name"]: _round(s[str(v)]["dice"]["mean"]) for v in labels},
            }
        write_json(pred_dir / "evaluation.json", docs)
        self.results["heldout"] = per_domain
        self.results["predictions"] = sorted(
            f"predictions/{Path(c['output']).name}" for c in summary["cases"] if c["status"] == "ok"
        )
        dice = ", ".join(f"{k} {fmt_number(v['dice'])}" for k, v in per_domain.items())
        self.steps.done(f"{summary['num_written']} masks in {pred_dir}; held-out Dice per scanner: {dice}")
        if summary["num_failed"]:
            raise MedattnError(f"{summary['num_failed']} held-out volume(s) could not be predicted; see {pred_dir}")

    def drift(self) -> None:
        from medattn.drift.analysis import analyse
        from medattn.drift.extract import extract_features
        from medattn.drift.options import DriftOptions
        from medattn.drift.plots import write_plots
        from medattn.errors import DataError
        from medattn.jsonio import write_json

        others = [d.name for d in self.manifest.domains if d.name != self.first]
        self.steps.start("drift", f"drift tests: scanner {self.first} as reference, {', '.join(others)} as targets")
        device = str(resolve_device(self.cfg.device))
        loaded = self.loaded_model()
        options = DriftOptions(seed=self.cfg.seed)
        ref, ref_fail = extract_features(
            loaded, self.manifest.datalist(self.first), overlap=options.overlap, device=device, progress=self.progress
        )
        found: dict[str, Any] = {}
        lines = []
        for name in others:
            tgt, fail = extract_features(
                loaded, self.manifest.datalist(name), overlap=options.overlap, device=device, progress=self.progress
            )
            try:
                rep = analyse(ref, tgt, options, ref_fail + fail)
            except DataError as e:  # too few readable volumes to test
                found[name] = {"drift": None, "note": e.problem}
                lines.append(f"{name}: not tested ({e.problem})")
                continue
            rep.plots = [str(p) for p in write_plots(rep, self.out, f"drift_{safe_name(name)}")]
            write_json(self.out / "drift" / f"{safe_name(name)}.json", rep.to_dict())
            found[name] = {
                "drift": rep.drift,
                "p_mmd": _round(rep.tests["mmd"].p_value),
                "p_ks": _round(rep.tests["ks_pca"].p_value),
                "flagged": len(rep.flagged),
                "volumes": len(rep.target),
                "dice_reference": _round(rep.dice.get("reference_mean")),
                "dice_target": _round(rep.dice.get("target_mean")),
                "dice_drop": _round(rep.dice.get("drop")),
            }
            self.figures.setdefault("drift", []).extend(
                (Path(p).name, f"scanner {name}: {caption}")
                for p, caption in zip(
                    rep.plots,
                    (
                        "model features on the reference's first two principal components",
                        "per-volume Mahalanobis scores against the threshold calibrated on held-out reference volumes",
                    ),
                )
            )
            lines.append(
                f"{name}: {'DRIFT' if rep.drift else 'no drift'} (MMD p {rep.tests['mmd'].p_value:.3g}, "
                # against every volume of the first scanner, training cases included: not the held-out drop the
                # closing table shows
                f"Dice drop from all of {self.first}'s volumes {fmt_number(rep.dice.get('drop'), signed=True)})"
            )
        self.results["drift"] = found
        self.steps.done("; ".join(lines))

    def adapt(self) -> None:
        from medattn.continual.adapt import adapt
        from medattn.continual.config import AdaptConfig
        from medattn.continual.metrics import heatmap

        cfg = self.cfg
        names = self.manifest.domain_names
        self.steps.start(
            "adapt",
            f"adapt through {' -> '.join(names)} with {', '.join(cfg.strategies)} ({cfg.adapt_epochs} epochs each)",
        )
        config = AdaptConfig(
            strategies=cfg.strategies,
            epochs=cfg.adapt_epochs,
            # Two volumes a step, one patch each, as in training on the first scanner. A phantom volume is one
            # patch, so adapt's default of two patches per volume gives two copies of each volume (augmented
            # apart) at twice the cost of a step: naive fine-tuning on B alone reached 0.58 in 17 s with one
            # patch per volume (16 epochs) against 0.54 in 14 s and 0.62 in 27 s with two (8 and 16 epochs).
            batch_size=2,
            samples_per_volume=1,
            lr=cfg.adapt_lr,
            methods={"replay": {"mem_size": cfg.replay_patches, "mem_batch": cfg.replay_batch}},
            augment=cfg.augment_options,
            seed=cfg.seed,
            device=cfg.device,
            loggers=("csv",),
            workers=0,
        )
        result = adapt(self.model_path, self.manifest, self.out / "runs" / "adapt", config, quiet=not self.progress)
        naive = result.runs["naive"].matrix if "naive" in result.runs else None
        found: dict[str, Any] = {}
        for method, run_ in result.runs.items():
            m = run_.matrix
            s = m.summary(naive)["overall"]
            before = m.baseline()
            found[method] = {
                "domains": list(m.domains),
                "rows": list(m.rows),
                "before": None if before is None else [_round(v) for v in before],
                "matrix": [[_round(v) for v in row] for row in m.matrix()],
                "average_dice": s["average_dice"],
                "bwt": s["bwt"],
                "forgetting": s["forgetting"],
                "fwt": s["fwt"],
            }
            png = heatmap(m, self.out / f"dice_matrix_{safe_name(method)}.png")
            self.figures.setdefault("adapt", []).append(
                (png.name, f"{method}: mean Dice on each scanner's held-out cases (columns) after each step (rows)")
            )
        self.results["adapt"] = found
        self.steps.done(
            "; ".join(
                f"{k}: average Dice {fmt_number(v['average_dice'])}, BWT {fmt_number(v['bwt'], signed=True)}, "
                f"forgetting {fmt_number(v['forgetting'])}"
                for k, v in found.items()
            )
        )

    def report(self) -> tuple[dict[str, Any], Path]:
        from medattn.data.io import atomic_write_text
        from medattn.report.demo_summary import write_report

        self.steps.start("report", "report: figures, report.html, summary.json")
        self._figures()
        summary = self.summary()
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        report = write_report(summary, self.figures, self.steps.timings, self.out / "report.html")
        self.steps.done(f"{len(list(self.out.glob('*.png')))} figures; {report}")
        atomic_write_text(self.out / "timings.json", json.dumps(self.steps.timings, indent=2) + "\n")
        return summary, report

    def _figures(self) -> None:
        from medattn.report.figures import orthogonal_slices, training_curves
        from medattn.report.volumes import volume_view
        from medattn.train.logs import read_csv

        run_dir = self.out / "runs" / "train"
        png = training_curves(read_csv(run_dir / "log.csv"), self.out / "training_curves.png", f"scanner {self.first}")
        self.figures["train"] = [(png.name, f"training on scanner {self.first}: loss and validation Dice per epoch")]
        device = str(resolve_device(self.cfg.device))
        loaded = self.loaded_model()
        queues = [self.manifest.datalist(d.name, split="test") for d in self.manifest.domains]
        chosen = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)][: self.cfg.figure_cases]
        for item in chosen:
            view = volume_view(loaded, item, device=device)
            png = orthogonal_slices(
                view.image,
                view.label,
                view.prediction,
                view.attention,
                self.out / f"slices_{safe_name(view.case_id)}.png",
                spacing=view.spacing,
                class_names=self.class_names,
                title=f"{view.case_id} (scanner {item['domain']}), model trained on {self.first}",
                attention_title=f"attention (gate {(view.attention_gate or 0) + 1} of {view.gates}, finest = 1)",
            )
            self.figures.setdefault("slices", []).append(
                (png.name, f"{view.case_id}, scanner {item['domain']}: preprocessed grid")
            )

    def summary(self) -> dict[str, Any]:
        """Every number of the run; relative paths only, no timings, so the same seed gives the same document.

        ``outcomes`` says per scanner in one sentence what adaptation did, from the ``adapt`` numbers
        (:func:`medattn.report.demo_summary.scanner_outcomes`).
        """
        from medattn.report.demo_summary import scanner_outcomes

        doc = {
            "format": SUMMARY_FORMAT,
            "version": 1,
            "config": self.cfg.to_dict(),
            "dataset": {
                "name": self.manifest.name,
                "labels": {str(k): v for k, v in self.manifest.labels.items()},
                "scanners": [
                    {
                        "name": d.name,
                        "cases": len(d.cases),
                        "train": len(d.splits["train"]),
                        "test": len(d.splits["test"]),
                        "description": str(d.metadata.get("description", "")),
                    }
                    for d in self.manifest.domains
                ],
            },
            "first_scanner": self.first,
            **self.results,
            "figures": {k: [name for name, _ in v] for k, v in self.figures.items()},
        }
        doc["outcomes"] = scanner_outcomes(doc)
        return doc


def _round(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if v != v else round(v, 6)
