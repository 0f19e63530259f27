"""cronloop's standard tasks (the jobs iTop users rely on cron.php for).

Each module uses only the public API (`worker.task`, `worker.TaskContext`) and its own
tables, exactly as an extension would. Importing this package imports every submodule,
which registers the tasks and their tables.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
