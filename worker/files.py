"""Files cronloop creates are private: 0600 files, 0700 directories, whoever creates them.

The unit's ``UMask=0077`` gives the service these modes; an admin's shell (umask 022)
would not, so every file or directory cronloop itself creates (the SQLite database, whose
``-wal`` and ``-shm`` files SQLite creates with the database's own mode, lock files, the
state directory) is made through here with an explicit mode. The process umask is never
changed (it is process-global). A file or directory that already exists keeps its mode:
it was made, or chosen, by someone else. This module knows nothing of what the files hold.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "open_private", "private_dir"]

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) if absent; a new leaf directory is 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """``os.open`` with ``O_CREAT``: a file created by this call gets mode 0600."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
