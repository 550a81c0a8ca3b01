"""The ``medattn`` commands: one module per subcommand, each the thin layer between the command line and one
library call.

Every command module defines ``NAME`` and ``HELP``, ``add_arguments(parser)`` (its options; the ones several
commands share come from :mod:`medattn.commands.options`) and ``run(args) -> int``: it turns the parsed arguments
(``--config`` values already merged in by :mod:`medattn.cli`) into the library's typed configuration, calls the
library, prints the human-readable result and returns the exit code (:mod:`medattn.commands.common`).

A command module imports only argparse and light medattn modules at module level, and the library (PyTorch,
MONAI, Avalanche) inside ``run``, so that building the parser, and with it ``medattn --help``, stays instant.

=========== ======================================== ==================================================
module      command                                  library call
=========== ======================================== ==================================================
validate    ``medattn validate DATA``                :func:`medattn.data.validate.validate_manifest`
manifest    ``medattn manifest DATA -o FILE``        :meth:`medattn.data.manifest.Manifest.save`
plan        ``medattn plan DATA``                    :func:`medattn.data.plan.make_plan`
synth       ``medattn synth OUT [--from DATA]``      :func:`medattn.data.synth.synth_phantom`, ``synth_from``
models      ``medattn models``                       :func:`medattn.models.registry.models_table`
train       ``medattn train DATA --out RUN``         :func:`medattn.train.trainer.train`
predict     ``medattn predict MODEL.. INPUT OUT``    :func:`medattn.infer.predict.run_predict`
evaluate    ``medattn evaluate PRED DATA``           :func:`medattn.evaluate.folder.evaluate_dataset`
crossval    ``medattn crossval RUN DATA``            :func:`medattn.evaluate.crossval.run_crossval`
drift       ``medattn drift MODEL ...``              :func:`medattn.drift.run.drift_report`
adapt       ``medattn adapt MODEL DATA --out RUN``   :func:`medattn.continual.adapt.adapt`
export      ``medattn export MODEL OUT``             :func:`medattn.export.export_model`
demo        ``medattn demo``                         :func:`medattn.demo.run`
=========== ======================================== ==================================================
"""
