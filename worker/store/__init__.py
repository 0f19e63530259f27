"""Storage: the store interface and its implementations.

`Store` (in `interface`) is the contract, in domain verbs; `sql.store.SqlStore` keeps it
on SQLite and MySQL/MariaDB, `memory.MemoryStore` in memory for fast tests. The records
the verbs exchange are re-exported here, so callers need only `cronloop.store`. This
package never imports the runtime.
"""

from cronloop.domain.records import (
    Claim,
    ClaimBatch,
    RunEntry,
    RunRecord,
    SyncReport,
    TaskDeclaration,
    TaskState,
    TriggerResult,
    UnknownTask,
)
from cronloop.store.interface import Ended, Store

__all__ = [
    "Claim",
    "ClaimBatch",
    "Ended",
    "RunEntry",
    "RunRecord",
    "Store",
    "SyncReport",
    "TaskDeclaration",
    "TaskState",
    "TriggerResult",
    "UnknownTask",
]
