"""``medattn demo``: the whole story end to end on the embedded phantom dataset (or ``--data``), with
:func:`medattn.demo.run`: prints its eight ``[k/8]`` steps, then the summary table and where the report is.

Defaults are None so that ``--config`` and then :class:`~medattn.demo.config.DemoConfig` fill them.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from medattn.commands.common import EXIT_OK
from medattn.commands.options import add_data_root, add_device, add_epochs, add_out, add_seed

if TYPE_CHECKING:
    from medattn.demo.config import DemoConfig

NAME = "demo"
HELP = "the whole story end to end on the embedded phantom dataset (or --data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset to run on instead of the embedded phantom (its first domain is trained on)")
    add_data_root(p)
    add_out(p, default="demo_out", help="output folder (default demo_out)")
    add_seed(p)
    g = p.add_argument_group("data")
    g.add_argument("--cases", type=int, help="phantom cases per scanner (default 40)")
    g.add_argument("--size", type=int, help="phantom volume edge in voxels (default 32)")
    g.add_argument("--scanners", help="scanner profiles, e.g. A,B,C,D (default: all for the phantom, B,C,D for --data)")
    g.add_argument("--max-cases", type=int, help="--data: use the first N labelled cases of each domain (default 40)")
    m = p.add_argument_group("training and adaptation")
    m.add_argument("--model", help="model preset (default ag_unet_fullres)")
    m.add_argument("--widths", help="feature widths per stage, e.g. 8,16,32,64 (default)")
    m.add_argument("--patch-size", help="training patch and window X,Y,Z (default: the plan's)")
    m.add_argument("--steps", type=int, help="training steps on the first scanner (default 600)")
    add_epochs(m, help="epochs the steps are split into, one validation each (default 10)")
    m.add_argument("--lr", type=float, help="training learning rate (default 0.01)")
    m.add_argument("--augment", help="augmentation: spatial (default), none, default, or JSON of options")
    m.add_argument(
        "--strategies", help="continual-learning methods (default replay,naive,joint; joint is the reference row)"
    )
    m.add_argument("--adapt-epochs", type=int, help="adaptation epochs per scanner (default 16)")
    m.add_argument("--adapt-lr", type=float, help="adaptation learning rate (default 0.005)")
    m.add_argument("--replay-patches", type=int, help="replay memory in patches over all scanners (default 64)")
    m.add_argument("--replay-batch", type=int, help="memory patches replayed per step (default 1)")
    r = p.add_argument_group("report and machine")
    r.add_argument("--figure-cases", type=int, help="held-out volumes drawn as orthogonal slices (default 4)")
    r.add_argument("--threads", type=int, help="PyTorch threads (default 1; fixed so runs repeat exactly)")
    add_device(p)
    p.set_defaults(seed=None)


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The :class:`~medattn.demo.config.DemoConfig` of parsed ``medattn demo`` arguments (values may come from
    ``--config`` YAML; None: the default)."""
    import dataclasses

    from medattn.demo.config import DemoConfig

    known = [f.name for f in dataclasses.fields(DemoConfig)]
    return DemoConfig(**{n: getattr(args, n) for n in known if getattr(args, n, None) is not None})


def run(args: argparse.Namespace) -> int:
    """Run with ``--threads`` PyTorch threads (the command owns the process's thread count), printing each step;
    then the summary table and where the report is."""
    import time

    from medattn.demo import run as run_demo
    from medattn.report.demo_summary import format_summary
    from medattn.runtime import retain_freed_memory, torch_threads

    cfg = demo_config(args)
    retain_freed_memory()  # the demo trains: as in medattn train
    t0 = time.perf_counter()
    with torch_threads(cfg.threads):
        result = run_demo(cfg, args.out, data=args.data, data_root=args.data_root, progress=not args.quiet, echo=print)
    print()
    print(format_summary(result.summary))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {result.report.resolve()}")
    return EXIT_OK
