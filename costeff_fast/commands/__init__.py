"""The ``costeff-fast`` commands, one module each: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args)``.

A new command is a new module here plus one entry in :data:`COMMANDS`; ``costeff_fast.cli`` builds the parser
and dispatches from this table.
"""

from __future__ import annotations

from . import calibrate, compress, demo, export, info, predict

COMMANDS = (demo, compress, calibrate, predict, export, info)
"""Every command module, in ``--help`` order."""
