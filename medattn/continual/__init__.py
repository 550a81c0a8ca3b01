"""Continual learning across scanners and sites, on Avalanche.

* :mod:`~medattn.continual.scenario`: a manifest as an Avalanche domain-incremental benchmark (one experience per
  domain), with :mod:`~medattn.continual.collate` bridging MONAI samples and Avalanche mini-batches.
* :mod:`~medattn.continual.template`: the one segmentation strategy (Avalanche ``SupervisedTemplate``) every method
  runs in; :mod:`~medattn.continual.plugin_metrics`: Dice as Avalanche plugin metrics.
* :mod:`~medattn.continual.methods`: one module per method, each a set of Avalanche plugins (or an Avalanche
  strategy class for the joint and cumulative upper bounds).
* :mod:`~medattn.continual.metrics`: the Dice matrix, average Dice, BWT, forgetting, FWT, plasticity.
* :mod:`~medattn.continual.runner` and :mod:`~medattn.continual.adapt`: ``medattn adapt`` (checkpoints per
  experience, resumable).

Imports are lazy: ``import medattn.continual`` does not import torch or Avalanche.
"""
