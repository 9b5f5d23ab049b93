"""Batch jobs over files: ``costeff-fast predict`` as a library (streamed input, sharded resumable output).

:func:`run_predict` runs a job; :func:`predict_rows` is its per-batch step, shared with the Ray integration
(:mod:`costeff_fast.integrations.ray`); :class:`JobArgumentError` is a refused argument (one line naming it).
"""

from .predict import DEFAULT_SHARD_ROWS, PredictSummary, output_schema, predict_rows, run_predict, split_failed
from .sources import JobArgumentError

__all__ = ["DEFAULT_SHARD_ROWS", "JobArgumentError", "PredictSummary", "output_schema", "predict_rows",
           "run_predict", "split_failed"]
