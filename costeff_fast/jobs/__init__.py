"""Batch jobs over files: ``costeff-fast predict`` as a library (streamed input, sharded resumable output).

:class:`PredictJob` describes a job, checked once when it is built; :func:`run_local` runs it in this process
(:func:`run_predict` builds and runs one), :func:`costeff_fast.integrations.ray.run_ray` on Ray Data. Both write
the same outputs and the same ``_manifest.json`` (:mod:`~costeff_fast.jobs.shards`). :func:`predict_rows` is the
per-batch step both engines share; :class:`JobArgumentError` is a refused argument (one line naming it),
:class:`JobPathError` a missing path (also a ``FileNotFoundError``), :class:`JobOutputError` an output the disk
has no room for (an ``OSError``: free space, then resume), :class:`AgreementBelowMinimum` a complete job whose
agreement audit fell below ``min_agreement``.
"""

from .predict import AgreementBelowMinimum, PredictSummary, output_schema, predict_rows, run_local, run_predict, split_failed
from .shards import SCHEMA_VERSION, JobOutputError
from .sources import JobArgumentError, JobPathError
from .spec import DEFAULT_SHARD_ROWS, ENGINES, PredictJob

__all__ = ["AgreementBelowMinimum", "DEFAULT_SHARD_ROWS", "ENGINES", "JobArgumentError", "JobOutputError",
           "JobPathError", "PredictJob", "PredictSummary", "SCHEMA_VERSION", "output_schema", "predict_rows",
           "run_local", "run_predict", "split_failed"]
