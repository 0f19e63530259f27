"""Process exit codes, from sysexits.h, so systemd's restart rules can tell them apart."""

from __future__ import annotations

OK = 0  # done, or stopped on request
ERROR = 1  # anything else (bad task name on the command line, ...)
DATAERR = 65  # the input data was refused (`cronloop restore`: a bad archive, a failed load)
SOFTWARE = 70  # internal fault: a blocked event loop, a crashed side loop
TEMPFAIL = 75  # planned lifetime restart, or database unreachable at start: try again
CONFIG = 78  # configuration error: restarting will not help
