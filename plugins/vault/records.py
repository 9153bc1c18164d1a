"""The vault's signed name records and rollback pins: the core's :mod:`hub.name_records`.

Kept as a module so the vault's code reads ``from plugins.vault.records
import ...``; the logic is the core's, shared with every storage backend
that lets the core keep its sharing state (:mod:`hub.sharing`).
"""

from hub.name_records import NameRecords, RecordConflict

__all__ = ["NameRecords", "RecordConflict"]
