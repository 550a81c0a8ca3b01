"""``medattn demo``: the end-to-end story on the embedded phantom dataset (or ``--data``).

What exists so far runs here in order: generate the multi-scanner phantom dataset, validate it, plan it. Training,
prediction, drift and adaptation steps join as they land (issues 4 to 7).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    from medattn.data.importers import load_dataset
    from medattn.data.io import atomic_write_text
    from medattn.data.plan import format_plan, make_plan
    from medattn.data.synth import synth_phantom
    from medattn.data.validate import format_report, validate_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.data:
        manifest = load_dataset(args.data)
        data_root = args.data_root
        print(f"[1/3] dataset {manifest.name}: {manifest.num_cases} cases in {len(manifest.domains)} domains")
    else:
        data_dir = out / "phantom"
        manifest_path = data_dir / "manifest.json"
        if not manifest_path.exists():
            synth_phantom(data_dir, seed=args.seed)
        manifest = load_dataset(manifest_path)
        data_root = None
        print(
            f"[1/3] phantom dataset in {data_dir}: {manifest.num_cases} cases, scanners "
            f"{', '.join(manifest.domain_names)}  ({time.perf_counter() - t0:.1f} s)"
        )

    report = validate_manifest(manifest, data_root=data_root, progress=False)
    atomic_write_text(out / "validation.json", json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"[2/3] validate: {format_report(report, max_rows=10).splitlines()[-1]}")
    if not report.ok:
        print(format_report(report, max_rows=20))
        return 1

    plan = make_plan(manifest, data_root=data_root, seed=args.seed)
    plan.save(out / "plan.json")
    print("[3/3] " + format_plan(plan))
    print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs in {out}/ (plan.json, validation.json)")
    return 0
