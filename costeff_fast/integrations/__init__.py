"""Adapters to other frameworks, each an optional extra that the core never imports.

* :mod:`costeff_fast.integrations.ray`: Ray Data (``pip install costeff_fast[ray]``): a callable class for
  ``ray.data.Dataset.map_batches`` and the engine behind ``costeff-fast predict --engine ray``.
"""
