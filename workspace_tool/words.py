"""``Word``: the string enum every word workspace-tool writes is a member of (statuses, states, paths, actions).

Each enum lives with what owns it (chain.plan's Path and StepKind, schema.state's State, registry.table's
RegistryStatus and RegistryAction, fleet.outcome's Outcome, ...). Their values are what the JSON reports, the
registry and the CLI's tables show; a member compares equal to its value (``Outcome.OK == "ok"``) and prints
as it (``str(Path.FAST) == "fast"``).
"""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A string enum that prints as its value (``str()``, f-strings, tables)."""

    def __str__(self) -> str:
        return str(self.value)
