"""Data: datasets, their checks, preprocessing plans, and simulated scanners.

================== =========================================================================================
datasets           ``manifest`` (the dataset description), ``importers`` (MSD, nnU-Net, BIDS, folders),
                   ``io`` and ``readers`` (volumes with their geometry), ``geometry`` (header policy)
checks             ``validate`` (``medattn validate``), ``checks`` (names, tolerances), ``case_checker`` (one
                   case), ``validation_report`` (findings and their table), ``gate`` (every command's input
                   checks), ``guard`` (outputs never touch inputs)
preprocessing      ``fingerprint``, ``plan`` (nnU-Net-style decisions), ``transforms`` (MONAI pipelines)
simulated scanners ``acquisition`` (deterministic physics, ``apply_shift``), ``scanners`` (the parameter sampler),
                   ``scanner_table`` (profiles A to D), ``phantom`` (the anatomy), ``synth`` (``medattn synth``),
                   ``synth_from`` (``--from DATA``), ``synth_writer`` (the dataset files)
================== =========================================================================================
"""
