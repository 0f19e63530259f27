"""cronloop's standard tasks (the jobs iTop users rely on cron.php for).

A plugin (`tasks/plugin.py`, entry point `cronloop.plugins`), exactly as an extension
would be: each module uses only the public API (`cronloop`, `cronloop.sql`,
`cronloop.testing`; import-linter checks it) and its own tables. Importing this package
imports every submodule, which registers the tasks and their tables.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
