"""Drift detection: does a target set of volumes differ from the reference a model knows, and what does it cost?

Modules, in the order a run uses them:

=============== ============================================================================================
``options``     ``DriftOptions``, the knobs saved in every report
``inputs``      the reference and target sets as items (image file, image folder or dataset), channels checked
``features``    what one volume contributes: bottleneck activations, prediction and image statistics, metadata
``extract``     one sliding-window pass per volume collecting its features; refused volumes are named
``stats``       the two-sample tests (whitened MMD, KS on PCA) and the Mahalanobis volume scorer
``analysis``    the decision rule and ``DriftReport`` from extracted features
``ranking``     the target volumes in labelling order (volume score and foreground entropy), CSV and JSON
``plots``       the report's PNG plots
``summary``     the report as printed text
``run``         ``run_drift`` and ``drift_report``, the library entry of ``medattn drift``
``calibration`` false alarms, power and AUROC of the rule on sets with known answers
``gate``        the drift gate of ``medattn adapt --auto``
=============== ============================================================================================
"""
