"""``medattn demo``: the whole story end to end, on the embedded phantom dataset or on a dataset of your own.

Eight steps, each printed as ``[k/8]`` with its time:

1. **data**: the multi-scanner phantom (A reference, B inverted contrast, C thick slices, D low field), or
   ``--data``: its first domain is the scanner the model knows and, when it has only one, the other scanners are
   simulated from it (:func:`medattn.data.synth_from.synth_from`, profiles B, C, D by default);
2. **validate** every case; 3. **plan** on the first scanner;
4. **train** on the first scanner's training split;
5. **predict** every scanner's held-out (test split) volumes by sliding window, masks in each input's exact
   geometry, and **evaluate** them (Dice per scanner);
6. **drift**: the first scanner's volumes as reference, each other scanner as target;
7. **adapt** through all scanners in order with each continual-learning strategy: Dice matrix, BWT, forgetting;
8. **report**: figures, ``report.html``, ``summary.json``.

The model used after training is the last epoch's (``model_last.pt``), not the one with the best validation Dice:
the validation cases are the held-out cases, and choosing on them would flatter the held-out Dice.

Outputs in ``OUT``::

    report.html           self-contained (figures embedded): open it offline
    summary.json          every number of the summary; the same seed and options give the same file
    timings.json          wall and CPU seconds per step (not in summary.json: they change between runs)
    *.png                 training curves, Dice matrices, drift plots, orthogonal slices of held-out volumes
    predictions/          <case>.nii.gz in the input's geometry, predictions.json, evaluation.json
    drift/<scanner>.json  the drift reports
    runs/train/, runs/adapt/   the training and adaptation runs (models, logs, TensorBoard)
    data/                 the phantom or simulated scanners, with manifest.json
    plan.json, validation.json, heldout.json, demo_config.json

An ``OUT`` that holds an earlier demo is cleared of those entries first; any other non-empty folder is refused.
"""

from medattn.demo.config import DemoConfig
from medattn.demo.run import DemoResult, run

__all__ = ["DemoConfig", "DemoResult", "run"]
