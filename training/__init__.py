"""COST-EFF training pipeline: teacher fine-tuning, TA distillation, slenderization, recovery.

Installed as ``costeff_fast.training`` (setup.py ``package_dir``) so the repository's top level keeps the
layout of the product card.
"""
