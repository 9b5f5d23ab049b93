"""COST-EFF training pipeline: teacher fine-tuning, TA distillation, slenderization, recovery, calibration.

Installed as ``costeff_fast.training`` (setup.py ``package_dir``). One idea per module:

- :mod:`.data`: the packaged MiniLM source, tokenized splits, padded DataLoaders, model inputs.
- :mod:`.budget`: :class:`~.budget.Budget` and the named presets (``paper``, ``quick``, ``demo``).
- :mod:`.losses`: every loss (classification, prediction and hidden-state distillation, slenderization).
- :mod:`.trainer`: the one training loop (AdamW, no decay on biases and LayerNorm weights) all stages use.
- :mod:`.prediction`: batched prediction over a dataset (HF logits, engine logits, exit accuracies).
- :mod:`.stage_cache`: a stage runs once; its directory keeps the checkpoint and ``stage.json``.
- :mod:`.importance`: Taylor importance of heads and FFN neurons against every exit.
- :mod:`.pruning`: physical removal of heads and neurons, embedding re-factorization by truncated SVD.
- :mod:`.allocation`: uniform vs global width allocation.
- :mod:`.schedule`: the pruning schedule (widths after each pruning event).
- :mod:`.slenderize`: the slenderization loop that composes importance, allocation, pruning and training.
- :mod:`.stages`: the four training stages (teacher, TA, slenderization, recovery), each cached.
- :mod:`.calibrate`: entropy-threshold sweep and choice.
- :mod:`.report`: the per-run report and Pareto plot.
- :mod:`.pipeline`: :func:`~.pipeline.compress`, everything end to end.
- :mod:`.demo`: the ``costeff-fast demo`` command.
"""
