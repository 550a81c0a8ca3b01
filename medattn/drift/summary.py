"""A drift report as the lines ``medattn drift`` prints: decision, p-values, volume level, Dice, metadata, the
first cases to label, failures."""

from __future__ import annotations

from medattn.drift.analysis import DriftReport
from medattn.drift.ranking import TOP


def format_report(report: DriftReport) -> str:
    """The text summary of ``report``, one finding a line (what ``medattn drift`` prints before its exit code)."""
    lines = [
        f"{'DRIFT' if report.drift else 'no drift'} ({len(report.reference)} reference, "
        f"{len(report.target)} target volumes; alpha {report.options.alpha:g})"
    ]
    for name, t in report.tests.items():
        lines.append(f"  {name:<7} p = {t.p_value:.4g}   effect size {t.effect_size:.4g}")
    for name, t in report.image_tests.items():
        lines.append(f"  image {name:<7} p = {t.p_value:.4g}   effect size {t.effect_size:.4g} (not in the decision)")
    flagged = report.flagged
    lines.append(
        f"  volume level: {len(flagged)}/{len(report.target)} target volumes above the threshold "
        f"{report.threshold:.3g} (calibrated for FPR {report.options.fpr:g})"
    )
    if report.dice.get("drop") is not None:
        lines.append(
            f"  Dice: reference {report.dice['reference_mean']:.3f}, target {report.dice['target_mean']:.3f}, "
            f"drop {report.dice['drop']:+.3f}"
        )
    for k, v in report.metadata_changes.items():
        if "reference_median" in v:
            lines.append(f"  metadata {k} (median): reference {v['reference_median']} -> target {v['target_median']}")
        else:
            lines.append(f"  metadata {k}: reference {v['reference']} -> target {v['target']}")
    ranking = report.ranking
    if ranking:
        where = f" ({', '.join(report.ranking_files)})" if report.ranking_files else ""
        lines.append(f"  label first{where}: flagged first, then by the mean of score and entropy ranks")
        for r in ranking[:TOP]:
            lines.append(
                f"    {r['rank']:>3}. {r['case_id']}  score {r['volume_score']:.3g}"
                f"{' (flagged)' if r['flagged'] else ''}  foreground entropy {r['foreground_entropy']:.3g}"
            )
    for f in report.failures:
        lines.append(f"  FAILED {f['case']}: {f['file']}: {f['reason']}")
    return "\n".join(lines)
