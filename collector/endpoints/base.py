"""What a read endpoint declares: how it is called, the entity kind it walks and its poll job, the
wire records it reads, and the three steps of a poll that belong to it (answer -> observations,
observations -> fleet state, observations -> points). `collector.endpoints` lists the endpoints;
the client, the pipeline, the scheduler's jobs, `check-config` and the configuration read them from
there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Generic, Literal, Protocol, TypeVar

from collector.platform.wire import (
    ARRAY,
    ParseContext,
    Parsed,
    Record,
    WireTable,
    parse_records,
    records_of,
)
from collector.sinks.points import Measurement
from collector.state import Change, FleetState

T = TypeVar("T")
EntityKind = Literal["device", "card", "account"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """How one endpoint is called.

    `param` is the form field carrying the entity id(s); for batch endpoints the ids are joined with
    commas. `batch_limit` is the most ids one request may carry (1 for per-device endpoints, 0 for
    endpoints that take no id).
    """

    path: str
    param: str
    batch_limit: int
    documented: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """What one request asked for: the ids it carried and its whole form."""

    ids: tuple[str, ...]
    form: Mapping[str, str]


class ReadEndpoint(Generic[T]):
    """One read endpoint of the platform. A module declares a subclass and one instance of it.

    `call` holds the defaults of `platform.endpoints.<name>`; `job` and `interval` those of
    `jobs.<job>`; `entity` is what the job walks (each device, batches of cards, or the one account);
    `wire` the records the answer holds (overridable with `platform.fields.<name>`); `measurements`
    what `points` writes (documented in docs/schema.md).
    """

    name: str
    call: EndpointSpec
    entity: EntityKind
    job: str
    interval: float
    enabled: bool = True
    wire: WireTable
    measurements: tuple[Measurement, ...] = ()
    # Whether an id asked for and left out of the answer is one the platform does not know (its job
    # then backs off from it), rather than one with nothing to report.
    absent_means_unknown: bool = False

    def table(self, ctx: ParseContext) -> WireTable:
        """The wire table with this endpoint's field-name overrides applied."""
        return self.wire.resolve(ctx.fields.get(self.name, ()))

    def extra_form(self, now: float, tz: tzinfo, given: Mapping[str, str] | None = None) -> dict[str, str]:
        """Form fields sent besides the ids: `given` checked (ValueError when unusable), or what a
        poll at `now` sends. None by default."""
        return dict(given or {})

    def parse(self, data: Any, ctx: ParseContext, query: Query) -> Parsed[T]:
        """The answer's `data` as observations (ParseError when its structure is wrong)."""
        raise NotImplementedError

    def answers_for(self, item: T) -> tuple[str, ...]:
        """The ids an observation answers (the rest of a batch's ids are reported missing)."""
        return ()

    def observe(self, state: FleetState, items: Sequence[T]) -> Change:
        """Update the fleet state; what changed goes to the alert engine."""
        return Change()

    def points(self, state: FleetState, items: Sequence[T], change: Change) -> list[str]:
        """The lines one poll writes (after `observe`)."""
        raise NotImplementedError

    def failed(self, state: FleetState, ids: Sequence[str], error: str, at: float) -> Change:
        """A poll of `ids` failed for good: record it where the state keeps failures."""
        return Change()


class _Card(Protocol):
    @property
    def iccid(self) -> str: ...

    @property
    def sim_no(self) -> str: ...


C = TypeVar("C", bound=_Card)


def card_table(record: Record) -> WireTable:
    """The table of a batch endpoint over cards: `data` is the list of `record`s (a bare array by
    default; `platform.fields.<endpoint>.records` names the key of an object holding it)."""
    return WireTable((Record("data", (("records", "", ARRAY(record.name)),)), record))


class CardEndpoint(ReadEndpoint[C]):
    """A batch endpoint over cards (`iccids` in the form, comma-separated): its records become
    `model(iccid=..., <the record's fields>, polled_at=...)`, a bad record is skipped, and a card the
    answer does not mention is reported missing."""

    entity = "card"
    model: Callable[..., C]
    absent_means_unknown = True

    def parse(self, data: Any, ctx: ParseContext, query: Query) -> Parsed[C]:
        t = self.table(ctx)
        key = t["data"].key("records")
        row = t.records[1]
        return parse_records(records_of(data, key, self.name), f"data.{key}" if key else "data", self.name,
                             lambda rec, path: self.one(rec, path, row, ctx, query))

    def one(self, rec: dict[str, Any], path: str, row: Record, ctx: ParseContext, query: Query) -> C:
        """One record of the list."""
        return self.model(iccid=row.identify(rec, path, self.name), **row.read(rec, ctx), polled_at=ctx.polled_at)

    def answers_for(self, item: C) -> tuple[str, ...]:
        return (item.iccid, item.sim_no)
