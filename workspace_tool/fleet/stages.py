"""Which schemas a fleet run takes, in which order and stages, and when a stage stops starting them.

A ``Selection`` narrows the projects the run read (every one for ``--all``, or the named ones) by state (the
vocabulary `status` shows), by glob on project ids, and to a list of ids. The schemas left to migrate start
in the run's order (as read, by project id, or a seeded shuffle) and are split into stages (``Staging``): a
canary (the first N, or N percent, or named ids) that runs first and stops the run at its first failure,
then the main stage, which stops starting schemas once ``max_failures`` of its schemas have failed
(``--fail-fast`` is 1). Everything here is checked before any SQL is sent.

A canary named by id is those of its schemas still to migrate. When none is left (a rerun of a command
whose canary already went through), the canary stage is empty and reported so (``canary_at_target``): it
does not run, and the main stage runs only if the command asked for it (not with ``canary_only``)."""

from __future__ import annotations

import fnmatch
import hashlib
import math
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workspace_tool.chain import Chain
from workspace_tool.errors import ConfigurationError
from workspace_tool.fleet.outcome import Stop, StopReason
from workspace_tool.naming import schema_for
from workspace_tool.schema.operation import Work
from workspace_tool.schema.state import SchemaRecord, State
from workspace_tool.words import Word

if TYPE_CHECKING:
    from fractions import Fraction  # imported when a percentage is parsed (2-3 ms of every fleet start-up)


class Stage(Word):
    """The stage of a fleet run a schema belongs to (SchemaResult.stage)."""

    CANARY = "canary"  # migrated first; the main stage starts only if none of it failed
    MAIN = "main"  # the rest (every schema of a run without a canary)


class Order(Word):
    """The order a fleet run starts schemas in (its canary is the first ones)."""

    NAME = "name"  # by project id
    RANDOM = "random"  # a shuffle seeded by the run's seed (reproducible)


@dataclass(frozen=True)
class Amount:
    """A number of schemas (1 or more), or a percentage of them: ``of(total)`` rounds it up, never below 1."""

    spec: str  # as given, e.g. '5' or '10%'
    count: int | None = None
    percent: Fraction | None = None

    @classmethod
    def parse(cls, value: int | str, option: str | None = None) -> Amount:
        """``5`` or ``'5'`` (schemas), ``'10%'``; ``option`` names the option in the error."""
        from fractions import Fraction

        text = str(value).strip()
        try:
            if text.endswith("%"):
                percent = Fraction(text[:-1].strip())
                if 0 < percent <= 100:
                    return cls(text, percent=percent)
            elif int(text) >= 1:
                return cls(text, count=int(text))
        except (ValueError, ZeroDivisionError):
            pass
        raise ConfigurationError(
            f"{option + ': ' if option else ''}{text!r} is neither a number of schemas (1 or more) nor a "
            "percentage of them (above 0%, at most 100%), e.g. 5 or 10%"
        )

    def of(self, total: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return max(1, math.ceil(self.percent * total / 100))

    def __str__(self) -> str:
        return self.spec


def shuffled(seed: int, project_id: str) -> bytes:
    """A project's place in the random order of ``seed``: a keyed hash of its id. Each project's place
    depends on the seed and its id alone, so the schemas left after a canary start in the order they would
    have had in one run (the command printed after --canary-only passes the same seed)."""
    return hashlib.blake2b(project_id.encode(), digest_size=8, key=str(seed).encode()).digest()


def _strings(values: Iterable[str] | str) -> tuple[str, ...]:
    return (values,) if isinstance(values, str) else tuple(values)


def _state(value: str) -> State:
    try:
        return State.parse(value)
    except ValueError:
        known = ", ".join(repr(str(s)) for s in State)
        raise ConfigurationError(f"unknown state {value!r}: the states are {known}") from None


def require_known(ids: Iterable[str], records: Iterable[SchemaRecord], what: str) -> None:
    """Raise if any of ``ids`` is not a project the run read: a typo must not shrink a run silently."""
    unknown = sorted(set(ids) - {r.project_id for r in records})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConfigurationError(
            f"{what}: {len(unknown)} project id(s) not in the fleet ({shown}); nothing was changed: "
            "remove them (`workspace-tool status` counts the fleet, `workspace-tool list` lists it)"
        )


_WITHOUT_VERSION = {State.MISSING, State.ORPHAN, State.FAILED}  # the states the registry and catalog tell


@dataclass(frozen=True)
class Selection:
    """The projects a run takes among those it read: every criterion given must hold.

    ``states``: any of these states (`status`'s: 'behind', 'failed', ...; empty: any); ``match``: project ids
    matching any of these globs (``*``, ``?``, ``[ab]``; empty: any); ``ids``: only these project ids (each
    must be a project of the fleet; None: any)."""

    states: Collection[str] = ()
    match: Collection[str] = ()
    ids: Collection[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", frozenset(_state(s) for s in _strings(self.states)))
        object.__setattr__(self, "match", _strings(self.match))
        if self.ids is not None:
            ids = tuple(dict.fromkeys(_strings(self.ids)))
            for project_id in ids:  # every id is checked before any SQL is sent
                schema_for(project_id)
            object.__setattr__(self, "ids", ids)

    def apply(self, records: list[SchemaRecord], chain: Chain) -> list[SchemaRecord]:
        if self.ids is not None:
            require_known(self.ids, records, "the named project ids")
        return [r for r in records if self.selects(r, chain)]

    @property
    def needs_versions(self) -> bool:
        """Whether it selects by a state only a schema's version tells (at-head, behind, ahead, empty)."""
        return bool(set(self.states) - _WITHOUT_VERSION)

    def selects(self, record: SchemaRecord, chain: Chain) -> bool:
        return (
            (not self.states or record.state(chain) in self.states)
            and (not self.match or any(fnmatch.fnmatchcase(record.project_id, glob) for glob in self.match))
            and (self.ids is None or record.project_id in self.ids)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "states": sorted(str(s) for s in self.states),
            "match": list(self.match),
            "ids": None if self.ids is None else list(self.ids),
        }


@dataclass(frozen=True)
class StagePlan:
    """The schemas to migrate, in the order they start, split into stages."""

    canary: list[Work] | None  # None: no canary stage
    main: list[Work]
    seed: int | None = None  # the random order's seed
    canary_at_target: int = 0  # the named canary's schemas with nothing to migrate (at the target already)

    def stages(self) -> list[tuple[Stage, list[Work]]]:
        main = [(Stage.MAIN, self.main)]
        return main if self.canary is None else [(Stage.CANARY, self.canary), *main]


@dataclass(frozen=True)
class Staging:
    """How a run stages its schemas and when a stage stops starting them (see the module's docstring)."""

    fail_fast: bool = False
    max_failures: Amount | None = None  # of the main stage's schemas
    canary: Amount | None = None  # of the schemas to migrate
    canary_ids: tuple[str, ...] | None = None
    canary_only: bool = False
    order: Order | None = None  # None: as read (by project id for every project, as named otherwise)
    seed: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        fail_fast: bool = False,
        max_failures: int | str | None = None,
        canary: int | str | None = None,
        canary_ids: Iterable[str] | None = None,
        canary_only: bool = False,
        order: str | None = None,
        seed: int | None = None,
    ) -> Staging:
        """The options of ``fleet.run``, checked (ConfigurationError saying what to pass instead)."""
        if fail_fast and max_failures is not None:
            raise ConfigurationError("--fail-fast and --max-failures: pass one (--fail-fast is --max-failures 1)")
        if canary is not None and canary_ids is not None:
            raise ConfigurationError("--canary and --canary-ids: pass one (a number of schemas, or which ones)")
        if canary_only and canary is None and canary_ids is None:
            raise ConfigurationError("--canary-only needs a canary: pass --canary N (or N%) or --canary-ids")
        if order is not None and order not in {str(o) for o in Order}:
            raise ConfigurationError(f"unknown order {order!r}: 'name' or 'random'")
        if seed is not None and order != Order.RANDOM:
            raise ConfigurationError("--seed seeds --order random: pass --order random too")
        ids = None
        if canary_ids is not None:
            ids = tuple(dict.fromkeys(_strings(canary_ids)))
            if not ids:
                raise ConfigurationError("--canary-ids names no project: name the canary's projects")
            for project_id in ids:
                schema_for(project_id)
        return cls(
            fail_fast,
            None if max_failures is None else Amount.parse(max_failures, "--max-failures"),
            None if canary is None else Amount.parse(canary, "--canary"),
            ids,
            canary_only,
            None if order is None else Order(order),
            seed,
        )

    def check_known(self, records: list[SchemaRecord]) -> None:
        if self.canary_ids is not None:
            require_known(self.canary_ids, records, "--canary-ids")

    def plan(self, work: list[Work]) -> StagePlan:
        """The canary is the first N (or N%) of the schemas to migrate in the run's order, or those named."""
        ordered, seed = list(work), self.seed
        if self.order == Order.NAME:
            ordered.sort(key=lambda w: w.project_id)
        elif self.order == Order.RANDOM:
            seed = random.SystemRandom().randrange(2**31) if seed is None else seed
            ordered.sort(key=lambda w: shuffled(seed, w.project_id))
        at_target = 0
        if self.canary_ids is not None:
            chosen = set(self.canary_ids)
            canary: list[Work] | None = [w for w in ordered if w.project_id in chosen]
            at_target = len(chosen) - len(canary or ())
        elif self.canary is not None:
            canary = ordered[: self.canary.of(len(ordered))]
        else:
            canary = None
        first = {w.project_id for w in canary or ()}
        return StagePlan(canary, [w for w in ordered if w.project_id not in first], seed, at_target)

    def limit(self, stage: Stage, schemas: int) -> tuple[int | None, Stop | None]:
        """How many failed schemas stop ``stage`` from starting more (None: no number does), and the stop."""
        if stage == Stage.CANARY:
            return 1, Stop(StopReason.CANARY_FAILED)
        if self.fail_fast:
            return 1, Stop(StopReason.FAIL_FAST)
        if self.max_failures is None:
            return None, None
        limit = self.max_failures.of(schemas)
        return limit, Stop(StopReason.MAX_FAILURES, limit=limit, amount=str(self.max_failures))
