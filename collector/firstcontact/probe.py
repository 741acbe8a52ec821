"""`iot-collector probe`: first contact with a real platform, with the user's credentials and a
bounded number of read requests (`session.REQUEST_LIMIT`, paced by `platform.rate_limit`).

What it finds out, in order, and reports (`ProbeReport`, rendered by `collector.firstcontact.report`):

1. Reachability: the documented endpoint with the configured recipe; TLS problems named, the HTTP
   status, the clock skew from the envelope's `timestamp`.
2. Signing: on an auth-class answer (`session.AUTH_KINDS`), the recipes of `recipes.catalogue()`
   likeliest first, until one is accepted: an answer that is neither an auth error nor a transport
   error means the signature passed (a "device does not exist" answer included).
3. Endpoints: for each enabled job, the configured path and parameter, then a short list of likely
   variants (`PATH_VARIANTS`, `*_PARAMS`); which answered with code 0 and with the record asked for,
   and how its `data` compares with the endpoint's wire table (`shapes.compare`), with
   `platform.fields` proposals.
4. The flow unit, inferred from the package sizes seen (`flowunit`).
5. End to end: a device polled by the collector's own client with the resulting settings.

Exit code (`ProbeReport.exit_code`): 0 when a device polls end to end with the resulting settings,
1 when not.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from collector.config import Config, PlatformConfig, RetryConfig, SignConfig
from collector.endpoints import ENDPOINTS
from collector.endpoints.base import EndpointSpec, Query, ReadEndpoint
from collector.firstcontact import recipes
from collector.firstcontact.flowunit import FlowUnitInference, infer_flow_unit
from collector.firstcontact.session import Answer, RequestLimitReached, Session
from collector.firstcontact.settings import Discovered, apply
from collector.firstcontact.shapes import Proposal, ShapeReport, compare, instances, mask
from collector.inventory import load_inventory
from collector.platform.client import PlatformClient
from collector.platform.errors import ParseError, PlatformError
from collector.platform.wire import ParseContext, WireTable

log = structlog.get_logger("collector.probe")

# A device number no platform has: signing can be checked with it (a "device does not exist" answer
# means the signature passed) when the configuration names no device.
UNKNOWN_DEVICE = "0000000000"

# Likely names of each read endpoint, relative to the folder of its default path (`/openapi/iot/`).
PATH_VARIANTS: dict[str, tuple[str, ...]] = {
    "device_flow": ("queryDeviceFlow",),
    "device_info": ("queryDeviceInfo", "queryDeviceDetail", "device/info"),
    "card_info": ("querySimInfo", "queryCardInfo", "card/info"),
    "card_status": ("querySimStatus", "queryCardStatus", "card/status"),
    "card_usage": ("querySimRealFlow", "queryCardRealFlow", "querySimFlow", "card/flow"),
    "card_month_usage": ("querySimMonthFlow", "queryCardMonthFlow", "card/monthFlow"),
    "card_actions": ("querySimAction", "queryCardAction", "card/action"),
    "account_assets": ("queryAccountAssets", "queryAccount", "account/assets"),
}
DEVICE_PARAMS = ("deviceNo", "imei")
CARD_PARAMS = ("iccids", "iccid", "simNos", "cardNos")
PER_ENDPOINT = 8  # requests one endpoint's discovery may take
DEVICES_TRIED = 3  # inventory devices asked for before concluding the platform knows none
MAX_UNANSWERED = 5  # throttled or failed answers the sign search waits out before it gives up

# Above this skew a platform that checks the timestamp window (inferred: a few minutes) refuses requests.
SKEW_WARNING = 60.0


@dataclass
class Tried:
    """One request of a discovery: where it went and what came back."""

    path: str
    param: str
    answer: Answer
    records: int | None = None  # records answering the id asked for (code 0 only)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "param": self.param, "outcome": self.answer.kind,
                "answer": self.answer.outcome(), "records": self.records}


@dataclass
class EndpointResult:
    """How one endpoint answered: `status` is `ok` (code 0 with the record asked for), `empty`
    (code 0 without it), `failed` (the path exists, no parameter worked), `not found` (no path
    answered), `not tried` (no id to ask about, or no request left)."""

    name: str
    job: str
    configured: EndpointSpec
    status: str = "not tried"
    found: EndpointSpec | None = None
    tried: list[Tried] = field(default_factory=list)
    shape: ShapeReport | None = None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "status": self.status,
            "configured": {"path": self.configured.path, "param": self.configured.param},
            "found": None if self.found is None else {"path": self.found.path, "param": self.found.param},
            "tried": [t.as_json() for t in self.tried], "note": self.note,
            "data": None if self.shape is None else self.shape.as_json(),
        }


@dataclass
class ProbeReport:
    """Everything a probe found; `exit_code` 0 when a device polls end to end with `discovered`."""

    base_url: str
    limit: int
    rate_limit: float
    sent: int = 0
    reachability: dict[str, Any] = field(default_factory=dict)
    configured_sign: SignConfig = field(default_factory=SignConfig)
    accepted_sign: SignConfig | None = None
    sign_tried: list[tuple[SignConfig, Answer]] = field(default_factory=list)
    sign_note: str = ""
    catalogue_size: int = 0
    device: str = ""
    endpoints: dict[str, EndpointResult] = field(default_factory=dict)
    flow: FlowUnitInference = field(default_factory=lambda: FlowUnitInference(None, "none"))
    configured_flow_unit: str = "KiB"
    proposals: list[Proposal] = field(default_factory=list)
    discovered: Discovered = field(default_factory=Discovered)
    end_to_end: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    written: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.end_to_end.get("ok") else 1

    def as_json(self) -> dict[str, Any]:
        answers: dict[str, int] = {}
        for _recipe, answer in self.sign_tried:
            answers[answer.outcome()] = answers.get(answer.outcome(), 0) + 1
        return {
            "base_url": self.base_url,
            "requests": {"sent": self.sent, "limit": self.limit, "rate_limit": self.rate_limit},
            "reachability": self.reachability,
            "signing": {
                "configured": recipes.as_setting(self.configured_sign),
                "configured_accepted": self.accepted_sign is not None and not self.sign_tried,
                "accepted": None if self.accepted_sign is None else recipes.as_setting(self.accepted_sign),
                "tried": [{**recipes.as_setting(r), "answer": a.outcome(), "outcome": a.kind}
                          for r, a in self.sign_tried],
                "tried_summary": recipes.summary([r for r, _a in self.sign_tried]),
                "answers": answers, "catalogue_size": self.catalogue_size, "note": self.sign_note,
            },
            "device": mask(self.device) if self.device else None,
            "endpoints": {name: result.as_json() for name, result in self.endpoints.items()},
            "flow_unit": {"configured": self.configured_flow_unit, **self.flow.as_json()},
            "settings": self.discovered.settings(),
            "end_to_end": self.end_to_end,
            "problems": self.problems, "warnings": self.warnings,
            "write_config": self.written or None,
            "exit_code": self.exit_code,
        }


# "缺少参数iccids", "missing parameter: iccids", "参数cardNos不能为空": the platform naming the parameter it wants.
_NAMED_PARAM = re.compile(r"(?:缺少参数|缺少|参数|missing (?:required )?param(?:eter)?s?)\s*[:：]?\s*"
                          r"['\"“]?([A-Za-z_][A-Za-z0-9_]{1,30})", re.IGNORECASE)


_HEADER_NAMES = frozenset({"appid", "apiversion", "traceid", "timestamp", "sign"})


def named_param(message: str) -> str:
    """The form parameter an error message names, or "" (a header's name is not a form parameter)."""
    match = _NAMED_PARAM.search(message)
    name = match.group(1) if match else ""
    return "" if name.lower() in _HEADER_NAMES else name


def _folder(path: str) -> str:
    return path.rsplit("/", 1)[0] + "/" if "/" in path else "/"


def path_candidates(name: str, configured: EndpointSpec) -> list[str]:
    """The configured path, then the variants under the configured path's folder and the default's."""
    default = ENDPOINTS[name].call.path
    folders = list(dict.fromkeys([_folder(configured.path), _folder(default)]))
    out = [configured.path, default]
    for variant in PATH_VARIANTS.get(name, ()):
        out.extend(folder + variant for folder in folders)
    return list(dict.fromkeys(out))


def param_candidates(endpoint: ReadEndpoint[Any], configured: EndpointSpec) -> list[str]:
    if endpoint.entity == "account":
        return [configured.param]
    names = DEVICE_PARAMS if endpoint.entity == "device" else CARD_PARAMS
    return list(dict.fromkeys([configured.param, endpoint.call.param, *names]))


class Prober:
    """One probe run over a `Session`."""

    def __init__(self, config: Config, session: Session, report: ProbeReport, devices: Sequence[str],
                 cards: Sequence[str]) -> None:
        self.config = config
        self.platform = config.platform
        self.session = session
        self.report = report
        self.devices = list(devices)
        self.cards = list(cards)
        self.recipe = config.platform.sign
        self.specs = config.platform.endpoint_specs()
        self.fields: dict[str, dict[str, str]] = {k: dict(v) for k, v in config.platform.fields.items()}
        self.totals: list[Any] = []

    # --- helpers --------------------------------------------------------------------------------------------

    def ctx(self) -> ParseContext:
        """The parse context of the settings found so far (field overrides included)."""
        platform = self.platform.model_copy(update={"fields": self.fields})
        return ParseContext.from_config(platform, self.config.privacy, polled_at=time.time())

    async def send(self, path: str, form: Mapping[str, str], purpose: str,
                   recipe: SignConfig | None = None) -> Answer:
        """One request; a throttled or transient answer is tried once more (a throttle first halves
        the pace)."""
        answer = await self.session.send(path, form, recipe or self.recipe, purpose)
        if answer.kind == "rate_limited" or (answer.kind in ("transport", "http_error") and not answer.tls
                                              and (answer.status is None or answer.status >= 500)):
            if answer.kind == "rate_limited":
                self.session.limiter.slow_down()
            if self.session.left > 0:
                answer = await self.session.send(path, form, recipe or self.recipe, purpose + " (again)")
        return answer

    # --- 1 and 2: reachability and signing -------------------------------------------------------------------

    def reachability(self, answer: Answer) -> None:
        url = self.report.base_url
        info: dict[str, Any] = {"url": url, "path": answer.path, "outcome": answer.outcome(),
                                "reached": answer.kind not in ("transport", "refused")}
        if url.startswith("https:"):
            info["tls"] = f"certificate problem: {answer.tls}" if answer.tls else (
                "verified" if info["reached"] else "not reached")
        else:
            info["tls"] = "none (plain HTTP)"
            self.report.warnings.append("platform.base_url is plain HTTP: the app secret's signatures and the "
                                        "answers cross the network unencrypted")
        info["http_status"] = answer.status
        if answer.server_time is not None:
            skew = answer.server_time - (answer.sent_at + answer.received_at) / 2
            info["clock_skew_seconds"] = round(skew, 1)
            if abs(skew) > SKEW_WARNING:
                self.report.warnings.append(
                    f"this machine's clock is {abs(skew):.0f} s {'behind' if skew > 0 else 'ahead of'} the "
                    "platform's: platforms refuse timestamps outside a window of a few minutes; run NTP "
                    "(timedatectl set-ntp true)")
        else:
            info["clock_skew_seconds"] = None
        self.report.reachability = info

    async def sign_search(self, path: str, form: Mapping[str, str], first: Answer, budget: int) -> Answer | None:
        """Try the catalogue until a recipe passes; the accepted answer, or None."""
        configured = self.recipe
        preferred = recipes.other_unit(configured.timestamp) if first.kind == "timestamp" else configured.timestamp
        candidates = [r for r in recipes.catalogue(preferred) if not recipes.same_recipe(r, configured)]
        self.report.catalogue_size = len(candidates) + 1
        queue = deque(candidates)
        tried_keys: set[tuple[str, str, str, str]] = set()
        seen: dict[str, dict[str, int]] = {u: {"auth": 0, "timestamp": 0} for u in ("seconds", "milliseconds")}
        if first.kind in ("auth", "timestamp"):
            seen[configured.timestamp][first.kind] = 1
        dropped: set[str] = set()
        app_only = first.kind == "app"
        unanswered = 0
        while queue and len(self.report.sign_tried) < budget and self.session.left > 0:
            recipe = queue.popleft()
            key = (recipe.hash, recipe.template, recipe.case, recipe.timestamp)
            if key in tried_keys or recipe.timestamp in dropped:
                continue
            tried_keys.add(key)
            answer = await self.send(path, form, f"sign recipe {len(self.report.sign_tried) + 1}: "
                                                 f"{recipes.describe(recipe)}", recipe)
            self.report.sign_tried.append((recipe, answer))
            if answer.passed_auth:
                self.recipe = recipe
                return answer
            if answer.kind in ("rate_limited", "http_error", "not_json"):
                # Nothing learnt about this recipe: it is tried again later, a few times at most.
                unanswered += 1
                if unanswered > MAX_UNANSWERED:
                    self.report.sign_note = f"the platform keeps failing to answer: {answer.outcome()}"
                    return None
                tried_keys.discard(key)
                queue.insert(min(2, len(queue)), recipe)
                await asyncio.sleep(min(2.0 * unanswered, 10.0))
                continue
            unit = recipe.timestamp
            if answer.kind == "timestamp":
                seen[unit]["timestamp"] += 1
                if seen[unit]["auth"]:
                    # This unit got past the timestamp check before, so the platform checks the
                    # signature first: this one passed, its timestamp did not. Same recipe, other unit.
                    queue.appendleft(recipe.model_copy(update={"timestamp": recipes.other_unit(unit)}))
                elif seen[unit]["timestamp"] >= 2:
                    dropped.add(unit)
                    if len(dropped) == 2:
                        self.report.sign_note = ("every answer refused the timestamp, in seconds and in "
                                                 "milliseconds: check this machine's clock")
                        return None
            elif answer.kind == "auth":
                seen[unit]["auth"] += 1
                app_only = False
            elif answer.kind != "app":
                app_only = False
            if answer.kind == "app" and app_only and len(self.report.sign_tried) >= 2:
                self.report.sign_note = ("the platform refuses the appID itself (whatever the signature): "
                                         "check platform.app_id")
                return None
            if answer.kind in ("transport", "refused"):
                self.report.sign_note = f"the platform stopped answering: {answer.outcome()}"
                return None
        if not self.report.sign_note:
            left = len(queue)
            self.report.sign_note = (f"{left} less likely recipe(s) of the catalogue were not tried "
                                     "(the request bound)") if left else "the whole catalogue was tried"
        return None

    # --- 3: endpoints --------------------------------------------------------------------------------------

    def parse_count(self, endpoint: ReadEndpoint[Any], data: Any, ids: Sequence[str], form: Mapping[str, str],
                    ) -> tuple[int, str]:
        """How many records of `data` answer the ids asked for, and the parse problem if any."""
        try:
            parsed = endpoint.parse(data, self.ctx(), Query(tuple(ids), form))
        except ParseError as error:
            return 0, str(error)
        if endpoint.entity == "account":
            return len(parsed.items), ""
        if endpoint.entity == "device":
            return len(parsed.items), ""
        wanted = set(ids)
        return sum(1 for item in parsed.items if wanted & set(endpoint.answers_for(item))), ""

    def examine(self, endpoint: ReadEndpoint[Any], answer: Answer, ids: Sequence[str], form: Mapping[str, str],
                ) -> tuple[int, ShapeReport]:
        """Records answering the ids, and the shape report; unambiguous field proposals are taken
        when they make the answer parse."""
        name = endpoint.name
        shape = compare(endpoint, answer.data, self.fields.get(name), self.ctx())
        count, problem = self.parse_count(endpoint, answer.data, ids, form)
        trial = {p.override: p.wire_key for p in shape.proposals if p.unambiguous}
        if trial:
            before = self.fields.get(name, {})
            self.fields[name] = {**before, **trial}
            again, problem_again = self.parse_count(endpoint, answer.data, ids, form)
            reshaped = compare(endpoint, answer.data, self.fields[name], self.ctx())
            if again > count or (again == count and len(reshaped.missing()) < len(shape.missing())):
                for proposal in shape.proposals:
                    proposal.applied = proposal.unambiguous
                reshaped.proposals = shape.proposals + reshaped.proposals
                shape, count, problem = reshaped, again, problem_again
            else:
                self.fields[name] = before
        self.report.proposals.extend(p for p in shape.proposals
                                     if all(p.setting != q.setting for q in self.report.proposals))
        if problem and not shape.structure:
            shape.structure = problem
        return count, shape

    async def discover(self, endpoint: ReadEndpoint[Any], ids: Sequence[str], result: EndpointResult) -> None:
        """The configured path and parameter, then the variants: the first that answers code 0 with a
        record for `ids`. A path that answers anything but "not found" exists, and only its
        parameter names are tried next; an "unknown id" answer confirms path and parameter both."""
        name = endpoint.name
        configured = self.specs[name]
        extra = endpoint.extra_form(time.time(), self.ctx().tz)
        params = param_candidates(endpoint, configured)
        budget = min(PER_ENDPOINT, self.session.left)
        fallback: tuple[str, str, Answer] | None = None
        not_found_codes = self.platform.error_codes.not_found

        async def attempt(path: str, param: str) -> str:
            """One request: `found`, `confirmed` (path and parameter work, no record for the ids) or
            the answer's kind."""
            nonlocal fallback
            form = {**({param: ",".join(ids)} if param else {}), **extra}
            answer = await self.send(path, form, f"{name}: {path} {param}".rstrip())
            tried = Tried(path, param, answer)
            result.tried.append(tried)
            if answer.kind == "api_error" and answer.code in not_found_codes:
                fallback = fallback or (path, param, answer)
                return "confirmed"
            if answer.kind != "ok":
                return answer.kind
            count, shape = self.examine(endpoint, answer, ids, form)
            tried.records = count
            if count:
                result.found = EndpointSpec(path, param, configured.batch_limit, configured.documented)
                result.status, result.shape = "ok", shape
                self._collect_totals(endpoint, answer.data)
                return "found"
            if fallback is None:
                fallback = (path, param, answer)
                result.shape = shape
            return "confirmed" if endpoint.entity == "account" else "empty"

        path_exists = ""
        outcome = ""
        for path in path_candidates(name, configured):
            if len(result.tried) >= budget:
                break
            outcome = await attempt(path, configured.param)
            if outcome in ("found", "transport"):
                break
            if outcome in ("no_path", "refused", "rate_limited", "http_error", "not_json"):
                continue
            path_exists = path
            break
        if outcome == "found":
            return
        if outcome == "transport":
            result.status, result.note = "failed", f"stopped: {result.tried[-1].answer.outcome()}"
        if path_exists and outcome != "confirmed":
            queue = deque(params[1:])
            asked = {configured.param}
            named = named_param(result.tried[-1].answer.message)
            while queue and len(result.tried) < budget:
                param = named if named and named not in asked else queue.popleft()
                if param in asked:
                    continue
                asked.add(param)
                outcome = await attempt(path_exists, param)
                if outcome in ("found", "confirmed"):
                    break
                named = named_param(result.tried[-1].answer.message)
            if outcome == "found":
                return
        if fallback is not None:
            path, param, answer = fallback
            result.status = "empty"
            result.found = EndpointSpec(path, param, configured.batch_limit, configured.documented)
            shown = ", ".join(mask(i) for i in ids) or "none"
            result.note = (f"path and parameter work, but the platform does not know the id asked for ({shown}): "
                           f"{answer.outcome()}" if answer.kind != "ok" else
                           f"answered with code 0, but without a record for the id asked for ({shown})")
            if answer.kind == "ok":
                self._collect_totals(endpoint, answer.data)
        elif path_exists:
            result.status = "failed"
            result.note = f"{path_exists} exists, but no parameter was accepted"
        elif result.tried and not result.note:
            result.status = "not found"
            result.note = "no path answered (every one was 'not found' or failed)"
        elif not result.tried:
            result.note = "no request left within the bound"

    def _collect_totals(self, endpoint: ReadEndpoint[Any], data: Any) -> None:
        """totalFlow values of the records of an answer (the flow unit's evidence)."""
        table = endpoint.wire.resolve(tuple(sorted(self.fields.get(endpoint.name, {}).items())))
        for _path, record, (name, key, _c) in table.paths():
            if name != "total_bytes":
                continue
            for instance in _records(data, record, table, endpoint.name):
                if key in instance:
                    self.totals.append(instance[key])

    def card_ids(self, device_answer: Answer | None) -> list[str]:
        """ICCIDs to ask the card endpoints about: --card, the device's SIMs, the inventory's cards."""
        ids = list(self.cards)
        if device_answer is not None and device_answer.kind == "ok":
            device_flow = ENDPOINTS["device_flow"]
            try:
                parsed = device_flow.parse(device_answer.data, self.ctx(),
                                           Query((self.report.device,), {}))
                ids.extend(sim.iccid for obs in parsed.items for sim in obs.sims)
            except ParseError:
                pass
        return list(dict.fromkeys(i for i in ids if i))

    # --- the run -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        report = self.report
        flow_spec = self.specs["device_flow"]
        device = self.devices[0] if self.devices else UNKNOWN_DEVICE
        report.device = device if self.devices else ""
        first = await self.send(flow_spec.path, {flow_spec.param: device},
                                "reachability and the configured sign recipe")
        self.reachability(first)
        if first.kind in ("transport", "refused"):
            report.problems.append(f"the platform could not be reached at {report.base_url}: {first.outcome()}")
            return
        if first.kind == "no_path":
            report.problems.append(f"{flow_spec.path}, the documented endpoint, is not found at {report.base_url} "
                                   f"({first.outcome()}): check platform.base_url")
            return
        if first.kind == "rate_limited":
            report.problems.append(f"the platform throttles us ({first.outcome()}): lower platform.rate_limit and "
                                   "probe again later")
            return
        if first.kind in ("not_json", "http_error"):
            report.problems.append(f"the platform's answer is not an API answer ({first.outcome()}): check "
                                   "platform.base_url")
            return
        answer: Answer | None = first
        if not first.passed_auth:
            answer = await self.sign_search(flow_spec.path, {flow_spec.param: device}, first,
                                            budget=max(self.session.left - self.reserve(), 1))
            if answer is None:
                tried = [self.platform.sign] + [r for r, _a in report.sign_tried]
                report.problems.append(
                    "no sign recipe was accepted: tried the configured one and "
                    f"{len(report.sign_tried)} of the catalogue's {report.catalogue_size - 1} "
                    f"({recipes.summary(tried)}). {report.sign_note}")
                return
            report.accepted_sign = self.recipe
            report.discovered.sign = self.recipe
        else:
            report.accepted_sign = self.recipe
        answer = await self.known_device(answer, flow_spec)
        await self.endpoints(answer)
        self.flow_unit()
        report.discovered.fields = {name: values for name, values in self.fields.items()
                                    if values != dict(self.platform.fields.get(name, {}))}
        await self.end_to_end()

    def reserve(self) -> int:
        """Requests kept back from the sign search: the end-to-end poll, a second device and one
        request per enabled endpoint. Finding the recipe matters most: an endpoint left untried for
        want of requests is found by probing again with the written configuration."""
        enabled = sum(1 for e in ENDPOINTS.values() if self.config.jobs.job(e.job).enabled)
        return 2 + enabled

    async def known_device(self, answer: Answer | None, spec: EndpointSpec) -> Answer | None:
        """The device answer with code 0: the first inventory device the platform knows."""
        report = self.report
        if answer is not None and answer.kind == "ok":
            return answer
        for device in self.devices[1:DEVICES_TRIED]:
            if self.session.left <= 0:
                break
            retry = await self.send(spec.path, {spec.param: device}, "a device the platform knows")
            if retry.kind == "ok":
                report.device = device
                return retry
        if self.devices:
            report.warnings.append(
                f"the platform answered the device {'numbers' if len(self.devices) > 1 else 'number'} asked for "
                f"with {answer.outcome() if answer else 'nothing'}: check inventory.devices (or --device)")
        return answer

    async def endpoints(self, device_answer: Answer | None) -> None:
        report = self.report
        cards = self.card_ids(device_answer)
        for name, endpoint in ENDPOINTS.items():
            if not self.config.jobs.job(endpoint.job).enabled:
                continue
            configured = self.specs[name]
            result = report.endpoints[name] = EndpointResult(name, endpoint.job, configured)
            if name == "device_flow" and device_answer is not None:
                self.flow_result(endpoint, device_answer, result)
                continue
            if endpoint.entity == "device":
                ids = [report.device] if report.device else []
            elif endpoint.entity == "card":
                ids = cards[:1]
            else:
                ids = []
            if endpoint.entity != "account" and not ids:
                result.note = ("no device to ask about (give --device or inventory.devices)" if endpoint.entity
                               == "device" else "no card to ask about (give --card, or a device with SIMs)")
                continue
            if self.session.left <= 0:
                result.note = "no request left within the bound: probe again with the written configuration"
                continue
            try:
                await self.discover(endpoint, ids, result)
            except RequestLimitReached:
                result.note = "no request left within the bound: probe again with the written configuration"
        for name, result in report.endpoints.items():
            if result.found is not None and result.status == "ok" and (
                    result.found.path != result.configured.path or result.found.param != result.configured.param):
                report.discovered.endpoints[name] = {"path": result.found.path, "param": result.found.param}

    def flow_result(self, endpoint: ReadEndpoint[Any], answer: Answer, result: EndpointResult) -> None:
        spec = self.specs["device_flow"]
        result.tried.append(Tried(spec.path, spec.param, answer))
        if answer.kind != "ok":
            result.status = "empty"
            result.note = f"answered {answer.outcome()} for the device asked for"
            return
        form = {spec.param: self.report.device}
        count, shape = self.examine(endpoint, answer, [self.report.device], form)
        result.tried[-1].records = count
        result.shape = shape
        result.status = "ok" if count else "failed"
        result.found = spec
        if not count:
            result.note = f"the answer does not parse: {shape.structure}"
        self._collect_totals(endpoint, answer.data)

    def flow_unit(self) -> None:
        report = self.report
        report.configured_flow_unit = self.platform.flow_unit
        report.flow = infer_flow_unit(self.totals)
        if report.flow.unit is not None and report.flow.confidence == "likely" \
                and report.flow.unit != self.platform.flow_unit:
            report.discovered.flow_unit = report.flow.unit

    async def end_to_end(self) -> None:
        """A device polled by the collector's client with the resulting settings."""
        report = self.report
        if not report.device:
            report.end_to_end = {"ok": False, "detail": "no device to poll: give --device or inventory.devices"}
            report.problems.append(report.end_to_end["detail"])
            return
        flow = report.endpoints.get("device_flow")
        if flow is not None and flow.status != "ok":
            detail = f"the device {mask(report.device)} was not answered: {flow.note or flow.status}"
            report.end_to_end = {"ok": False, "detail": detail}
            report.problems.append(detail)
            return
        platform = apply(self.platform, report.discovered).model_copy(update={"retries": RetryConfig(max_attempts=1)})
        try:
            async with PlatformClient(platform, self.config.privacy, base_url=self.session.base_url,
                                      transport=self.session.transport, limiter=self.session.limiter) as client:
                with self.session.purpose("end to end: the device polled with the resulting settings"):
                    observation = await client.device_flow(report.device)
        except PlatformError as error:
            detail = f"polling {mask(report.device)} with the resulting settings failed: {error.message}"
            report.end_to_end = {"ok": False, "detail": detail}
            report.problems.append(detail)
            return
        report.end_to_end = {"ok": True, "device": mask(report.device), "sims": len(observation.sims),
                             "detail": f"the device {mask(report.device)} and its {len(observation.sims)} SIM(s) "
                                       "polled with the resulting settings"}
        failing = [name for name, r in report.endpoints.items() if r.status != "ok"]
        for name in failing:
            result = report.endpoints[name]
            report.warnings.append(f"{name} ({result.status}): {result.note or 'see above'}; until it is set right, "
                                   f"disable jobs.{result.job} or set platform.endpoints.{name}")


def _records(data: Any, record: str, table: WireTable, endpoint: str) -> list[dict[str, Any]]:
    return instances(table, data, endpoint, ShapeReport(endpoint)).get(record, [])


def probe_targets(config: Config, device: str | None, card: str | None) -> tuple[list[str], list[str]]:
    """The devices and cards a probe asks about: the ones given, else the inventory's first few."""
    inventory = load_inventory(config.inventory)
    devices = [device] if device else list(inventory.devices)[:DEVICES_TRIED]
    cards = [card] if card else list(inventory.cards)[:1]
    return devices, cards


async def run_probe(config: Config, *, device: str | None = None, card: str | None = None,
                    base_url: str | None = None, limit: int | None = None) -> ProbeReport:
    """Probe the platform of `config`; never raises for what the platform does."""
    platform: PlatformConfig = config.platform
    devices, cards = probe_targets(config, device, card)
    session = Session(platform, **({"limit": limit} if limit else {}), base_url=base_url or "")
    report = ProbeReport(base_url=session.base_url, limit=session.limit, rate_limit=platform.rate_limit,
                         configured_sign=platform.sign, configured_flow_unit=platform.flow_unit)
    async with session:
        prober = Prober(config, session, report, devices, cards)
        try:
            await prober.run()
        except RequestLimitReached:
            report.problems.append(f"the bound of {session.limit} requests was reached before the probe ended")
        report.sent = session.sent
    log.info("probe done", requests=session.sent, exit_code=report.exit_code)
    return report
