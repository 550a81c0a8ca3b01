"""``medattn evaluate``: predicted masks scored against a dataset's labels (Dice, HD95, NSD, bootstrap intervals).

:mod:`.folder` matches a folder of predictions to the dataset's cases (the library entry, ``evaluate_dataset``),
:mod:`.case` checks and scores one case, :mod:`.metrics` holds the metrics and their summaries, :mod:`.results`
the JSON document, its CSV and the printed table, :mod:`.options` the scoring options.
"""
