"""The demo's summary, twice: a short table for the terminal and ``report.html`` for a browser.

Both read the ``summary.json`` document of :mod:`medattn.demo` (keys ``train``, ``heldout``, ``drift``, ``adapt``,
``dataset``, ``predictions``); the page adds the figures the demo wrote beside it, embedded, and the step timings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medattn.report import html_page as h
from medattn.text import table_lines

Figures = Mapping[str, Sequence[tuple[str, str]]]
"""Per section (``train``, ``slices``, ``drift``, ``adapt``), the PNG file names in the report's folder and their
captions."""


def fmt_number(v: Any, signed: bool = False) -> str:
    """A Dice, p-value or difference for the terminal: three decimals, ``-`` for None or NaN."""
    if v is None or v != v:
        return "-"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Names left-aligned in the first column, numbers right-aligned in the others; no rule."""
    return table_lines(headers, rows, align="<" + ">" * (len(headers) - 1), rule=False)


def _drift_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """Per scanner: the drift decision, its p-values, the held-out Dice and its drop from the first scanner's."""
    held = doc.get("heldout", {})
    first = held.get(doc["first_scanner"], {}).get("dice")
    rows = []
    for name, d in doc.get("drift", {}).items():
        verdict = "-" if d.get("drift") is None else ("DRIFT" if d["drift"] else "no drift")
        dice = held.get(name, {}).get("dice")
        drop = None if dice is None or first is None else first - dice
        rows.append(
            [
                name,
                verdict,
                fmt_number(d.get("p_mmd")),
                fmt_number(d.get("p_ks")),
                fmt_number(dice),
                fmt_number(drop, signed=True),
            ]
        )
    return rows


def _adapt_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for method, a in doc.get("adapt", {}).items():
        final = a["matrix"][-1] if a.get("matrix") else []
        rows.append(
            [
                method,
                *(fmt_number(v) for v in final),
                fmt_number(a.get("average_dice")),
                fmt_number(a.get("bwt"), signed=True),
                fmt_number(a.get("forgetting")),
            ]
        )
    return rows


def _adapt_headers(doc: Mapping[str, Any]) -> list[str]:
    runs: list[Mapping[str, Any]] = list(doc.get("adapt", {}).values())
    domains = runs[0]["domains"] if runs else []
    return ["strategy", *(f"final {d}" for d in domains), "avg Dice", "BWT", "forgetting"]


#: The reference row of the adaptation: every scanner's data at once (not a continual method).
REFERENCE = "joint"


def headline(description: str) -> str:
    """A scanner description's headline: the text before its first ``": "`` (the whole text when there is none)."""
    return description.split(": ", 1)[0].strip()


def _followed(doc: Mapping[str, Any]) -> str | None:
    """The continual method the sentences follow: the first of ``adapt`` that is not the reference."""
    return next((m for m in doc.get("adapt", {}) if m != REFERENCE), None)


def _final(run: Mapping[str, Any] | None, j: int) -> float | None:
    return None if not run or not run.get("matrix") else run["matrix"][-1][j]


def scanner_outcomes(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What adaptation did, in words made from the numbers of ``doc["adapt"]``: one sentence per scanner and one
    on the averages.

    Per scanner: its description's :func:`headline`; the Dice of the model trained on the first scanner (the
    ``before`` row); for the followed method (the first that is not ``joint``), the Dice after the scanner's own
    adaptation step (the matrix diagonal) and at the end (the last row); the reference's final Dice; every other
    method's final Dice. Numbers are :func:`fmt_number`'s, so a sentence quotes exactly what the matrix rounds to.

    Returns:
        ``{"scanners": {name: sentence}, "average": sentence}``; empty when nothing was adapted.
    """
    adapt = doc.get("adapt", {})
    if not adapt:
        return {}
    name = _followed(doc)
    ref = adapt.get(REFERENCE)
    main = adapt[name] if name else ref
    first = doc["first_scanner"]
    described = {s["name"]: headline(s.get("description", "")) for s in doc.get("dataset", {}).get("scanners", [])}
    others = [m for m in adapt if m not in (name, REFERENCE)]
    sentences = {}
    for j, scanner in enumerate(main["domains"]):
        what = described.get(scanner)
        before = main["before"][j] if main.get("before") else None
        text = f"{scanner}" + (f" ({what})" if what else "") + ": "
        if scanner == first:
            text += f"the model trained on it scored {fmt_number(before)}"
        else:
            text += f"the model trained on {first} scored {fmt_number(before)}"
        if name and j < len(main["matrix"]):  # a stopped run has no row for the scanners it did not reach
            own, final = main["matrix"][j][j], _final(main, j)
            ref_text = f" (joint training {fmt_number(_final(ref, j))})" if ref else ""
            if scanner == first:
                text += f"; {name}'s step on it gave {fmt_number(own)}{ref_text}"
            else:
                verb = "raised" if own > (before or 0) + 0.005 else "lowered" if own < (before or 0) - 0.005 else "left"
                to = "at" if verb == "left" else "to"
                text += f"; {name}'s adaptation step {verb} it {to} {fmt_number(own)}{ref_text}"
            text += f" and it ended at {fmt_number(final)}"
        elif ref:
            text += f"; joint training reached {fmt_number(_final(ref, j))}"
        if others:
            text += "; " + ", ".join(f"{m} ended at {fmt_number(_final(adapt[m], j))}" for m in others)
        sentences[scanner] = text + "."
    avg = [f"{m} {fmt_number(a.get('average_dice'))}" for m, a in adapt.items()]
    average = "Final average Dice over the scanners: " + ", ".join(avg)
    if name and ref:
        gap = (adapt[name].get("average_dice") or 0.0) - (ref.get("average_dice") or 0.0)
        average += f" ({name} {fmt_number(gap, signed=True)} against joint training)"
    return {"scanners": sentences, "average": average + "."}


def format_summary(doc: Mapping[str, Any]) -> str:
    """The terminal summary: Dice on the first scanner, drift per scanner, the adaptation strategies."""
    first = doc["first_scanner"]
    held = doc.get("heldout", {}).get(first, {})
    per = ", ".join(f"{k} {fmt_number(v)}" for k, v in held.get("per_class", {}).items())
    lines = [f"Trained on scanner {first}: held-out Dice {fmt_number(held.get('dice'))} ({per})", ""]
    lines += [
        f"Drift against scanner {first} (Dice: held-out cases, model trained on {first}; drop: {first}'s minus it):",
        *("  " + s for s in _text_table(["scanner", "decision", "p MMD", "p KS", "Dice", "drop"], _drift_rows(doc))),
        "",
    ]
    if doc.get("adapt"):
        lines += [
            "Adaptation (final Dice per scanner; BWT < 0 and forgetting > 0 mean old scanners were forgotten):",
            *("  " + s for s in _text_table(_adapt_headers(doc), _adapt_rows(doc))),
        ]
        outcomes = doc.get("outcomes") or scanner_outcomes(doc)
        if outcomes:
            lines += ["", "What happened per scanner (Dice as in the matrices: held-out cases, preprocessed grid):"]
            lines += [f"  {t}" for t in outcomes["scanners"].values()] + [f"  {outcomes['average']}"]
    return "\n".join(lines)


def _verdict(drift: bool | None) -> str | h.Markup:
    if drift is None:
        return "not tested"
    return h.span("DRIFT", "bad") if drift else h.span("no drift", "good")


def _figures(folder: Path, entries: Sequence[tuple[str, str]]) -> str:
    return "".join(h.figure(folder / name, caption) for name, caption in entries)


def write_report(
    doc: Mapping[str, Any], figures: Figures, timings: Mapping[str, Mapping[str, float]], path: str | Path
) -> Path:
    """Write ``report.html`` for the summary ``doc``; figure files are read from ``path``'s folder and embedded."""
    path = Path(path)
    first = doc["first_scanner"]
    ds = doc["dataset"]
    classes = [v for k, v in sorted(ds["labels"].items(), key=lambda kv: int(kv[0])) if int(k) != 0]
    sections = []

    sections.append(
        h.section(
            "Data",
            h.paragraph(
                f"{ds['name']}: {sum(s['cases'] for s in ds['scanners'])} cases from {len(ds['scanners'])} scanners. "
                f"The model is trained on scanner {first} only; every scanner's test split is held out."
            ),
            h.table(
                ["scanner", "cases", "train", "held out", "acquisition"],
                [[s["name"], s["cases"], s["train"], s["test"], s["description"]] for s in ds["scanners"]],
            ),
        )
    )

    t = doc.get("train", {})
    held = doc.get("heldout", {})
    sections.append(
        h.section(
            f"Training on scanner {first}",
            h.paragraph(
                f"{t.get('model')}: {t.get('steps')} optimiser steps on {t.get('train_cases')} cases, patch "
                f"{'x'.join(str(v) for v in t.get('patch_size', []))}. The last epoch's model is used below."
            ),
            _figures(path.parent, figures.get("train", ())),
            h.table(
                ["scanner", "held-out cases", "mean Dice", *classes],
                [[name, v["cases"], v["dice"], *(v["per_class"].get(c) for c in classes)] for name, v in held.items()],
                caption="Held-out Dice of the model trained on " + first + " (masks in each input's geometry)",
            ),
            h.paragraph(
                "Predictions (NIfTI, the input's shape and affine; open them over the images in 3D Slicer or ITK-SNAP):"
            ),
            "<p>" + ", ".join(h.link(p, Path(p).name) for p in doc.get("predictions", [])) + "</p>",
            _figures(path.parent, figures.get("slices", ())),
        )
    )

    drift = doc.get("drift", {})
    sections.append(
        h.section(
            "Drift",
            h.paragraph(
                f"Each scanner's volumes against scanner {first}'s, on the model's bottleneck features and its "
                "predictions: drift when the MMD or the KS-on-PCA test has p < alpha/2 (alpha 0.05). The reference "
                f"is every case of scanner {first}, training cases included, so its Dice is higher than the held-out "
                "Dice above; drop: the reference volumes' mean Dice minus the target volumes' (preprocessed grid; "
                "positive: worse on the target)."
            ),
            h.table(
                [
                    "scanner",
                    "decision",
                    "p (MMD)",
                    "p (KS, PCA)",
                    "volumes flagged",
                    "Dice ref.",
                    "Dice target",
                    "drop",
                ],
                [
                    [
                        name,
                        _verdict(d.get("drift")),
                        d.get("p_mmd"),
                        d.get("p_ks"),
                        f"{d['flagged']}/{d['volumes']}" if "flagged" in d else None,
                        d.get("dice_reference"),
                        d.get("dice_target"),
                        d.get("dice_drop"),
                    ]
                    for name, d in drift.items()
                ],
            ),
            _figures(path.parent, figures.get("drift", ())),
        )
    )

    adapt = doc.get("adapt", {})
    parts = [
        h.paragraph(
            "Continual learning from the trained model through the scanners in order. Row 'before' is the starting "
            "model; row 'after X' the model after adapting to X; row 'after joint' (the reference) the model "
            "trained once on every scanner's training data together, for as many epochs, so as many steps, as the "
            "continual methods' steps together. BWT: mean change on earlier scanners between "
            "learning them and the end (negative: forgetting); forgetting: mean drop from a scanner's best Dice."
        ),
        h.table(
            ["strategy", "average Dice", "BWT", "forgetting", "FWT"],
            [[m, a["average_dice"], a["bwt"], a["forgetting"], a["fwt"]] for m, a in adapt.items()],
        ),
    ]
    outcomes = doc.get("outcomes") or scanner_outcomes(doc)
    if outcomes:
        parts.append(h.bullets([*outcomes["scanners"].values(), outcomes["average"]]))
    for method, a in adapt.items():
        rows = ([["before", *a["before"]]] if a.get("before") else []) + [
            [f"after {r}", *vals] for r, vals in zip(a["rows"], a["matrix"])
        ]
        parts.append(h.table(["", *(f"on {d}" for d in a["domains"])], rows, caption=f"{method}: Dice matrix"))
    parts.append(_figures(path.parent, figures.get("adapt", ())))
    sections.append(h.section("Adaptation", *parts))

    sections.append(
        h.section(
            "Run",
            h.table(
                ["step", "wall s", "CPU s"],
                [[k, v["wall_s"], v["cpu_s"]] for k, v in timings.items()],
                caption="Time per step",
            ),
            h.paragraph(
                "Settings: " + ", ".join(f"{k}={v}" for k, v in doc["config"].items() if k not in ("format", "version"))
            ),
        )
    )
    subtitle = f"medattn demo: train on scanner {first}, predict, test drift, adapt (seed {doc['config']['seed']})"
    return h.write_page(path, "medattn demo report", subtitle, sections)
