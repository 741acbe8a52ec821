"""The platform's flow unit inferred from package sizes (`totalFlow`): an inference, with its
reasoning, never a fact. The vendor does not document the unit (docs/upstream-api.md).

The reasoning: a package allowance is a round size a carrier sells (1, 2, 5, 10, 20, 50, 100 GiB...
or 100, 500 MiB), so `totalFlow` read in the right unit lands on one. 104857600 is 100 × 1024²: 100 MiB
if the unit is bytes, 100 GiB if KiB, 100 TiB if MiB. Each unit scores per value: a common GiB plan
(what MiFi devices are sold with) counts most, a common MiB plan less, a whole number of MiB a
little; an implausible size (under 1 MiB or over 20 TiB) and a fraction of a byte count against it.
The best unit is reported as `likely` when it is ahead, `uncertain` on a tie.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from collector.formats import human_bytes

FlowUnit = Literal["B", "KiB", "MiB"]
UNITS: dict[FlowUnit, int] = {"B": 1, "KiB": 1024, "MiB": 1024**2}

GIB_PLANS = frozenset({1, 2, 3, 5, 6, 8, 10, 15, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000})
MIB_PLANS = frozenset({50, 100, 200, 300, 500, 512})
_MIB, _GIB = 1024**2, 1024**3
_TOO_SMALL, _TOO_LARGE = _MIB, 20 * 1024**4


@dataclass
class FlowUnitInference:
    """The inferred unit (None without evidence), how sure, and why."""

    unit: FlowUnit | None
    confidence: Literal["likely", "uncertain", "none"]
    scores: dict[FlowUnit, float] = field(default_factory=dict)
    reasoning: list[str] = field(default_factory=list)
    values: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"inferred": self.unit, "confidence": self.confidence, "inference": True, "scores": self.scores,
                "values": self.values, "reasoning": self.reasoning}


def _reading(value: float, unit: FlowUnit) -> tuple[float, str]:
    """Score and words for `value` read in `unit`."""
    size = value * UNITS[unit]
    if not float(size).is_integer():
        return -5.0, "a fraction of a byte" if unit == "B" else f"{human_bytes(size)}, not a whole number of bytes"
    shown = human_bytes(size) or "?"
    if size < _TOO_SMALL or size > _TOO_LARGE:
        return -2.0, f"{shown} (an implausible package size)"
    if size % _GIB == 0 and size // _GIB in GIB_PLANS:
        return 2.0, f"{shown} (a common package size)"
    if size % _MIB == 0 and size // _MIB in MIB_PLANS:
        return 1.0, f"{shown} (a common data-card package size)"
    if size % _MIB == 0:
        return 0.5, f"{shown} (a whole number of MiB)"
    return 0.0, shown


def infer_flow_unit(totals: Iterable[Any]) -> FlowUnitInference:
    """The unit under which the package sizes `totals` (totalFlow values, any JSON type) look like
    package sizes. Zero, negative and non-numeric values are no evidence."""
    values: list[float] = []
    for raw in totals:
        if isinstance(raw, bool):
            continue
        try:
            number = float(raw)
        except (TypeError, ValueError):
            continue
        if number > 0 and number == number and number != float("inf"):
            values.append(number)
    distinct = sorted(set(values))
    if not distinct:
        return FlowUnitInference(None, "none", reasoning=["no package size (totalFlow > 0) in the answers"])
    scores: dict[FlowUnit, float] = {name: 0.0 for name in UNITS}
    reasoning = []
    for value in distinct[:8]:
        readings = []
        for name in UNITS:
            score, words = _reading(value, name)
            scores[name] += score
            readings.append(f"{words} if {name}")
        shown = int(value) if value.is_integer() else value
        reasoning.append(f"totalFlow {shown}: " + "; ".join(readings))
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    (best, top), (_second, runner_up) = ranked[0], ranked[1]
    if top <= 0:
        reasoning.append("no unit makes these look like package sizes")
        return FlowUnitInference(None, "none", dict(scores), reasoning, len(values))
    confidence: Literal["likely", "uncertain"] = "likely" if top > runner_up else "uncertain"
    tied = [name for name, score in ranked if score == top]
    if confidence == "likely":
        reasoning.append(f"{best} makes the most of them common package sizes (score {top:g} against {runner_up:g})")
    else:
        reasoning.append(f"{' and '.join(tied)} fit equally well: the values alone cannot tell")
    return FlowUnitInference(best, confidence, dict(scores), reasoning, len(values))
