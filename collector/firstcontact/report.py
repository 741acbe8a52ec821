"""The probe's report for people: what was tried, what the platform accepted, what to set, and the
verdict. The same facts as `ProbeReport.as_json()` (`probe --json`), in words.
"""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from collector.firstcontact import recipes
from collector.firstcontact.probe import EndpointResult, ProbeReport
from collector.firstcontact.settings import dump_yaml

_UNKNOWN_SHOWN = 12


def render(report: ProbeReport, out: TextIO) -> None:
    """Write the report as text."""
    w = out.write
    w(f"iot-collector probe of {report.base_url}\n")
    w(f"{report.sent} request(s) sent (at most {report.limit}, at most {report.rate_limit:g} a second)\n")
    _reachability(report, out)
    _signing(report, out)
    if report.endpoints:
        _endpoints(report, out)
    if report.flow.values or report.flow.reasoning:
        _flow(report, out)
    _settings(report, out)
    _verdict(report, out)


def _reachability(report: ProbeReport, out: TextIO) -> None:
    r = report.reachability
    if not r:
        return
    out.write("\nReachability\n")
    out.write(f"  {'reached' if r.get('reached') else 'NOT REACHED'}: {r.get('path')} answered {r.get('outcome')}\n")
    out.write(f"  TLS: {r.get('tls')}\n")
    if r.get("http_status") is not None:
        out.write(f"  HTTP status: {r['http_status']}\n")
    skew = r.get("clock_skew_seconds")
    if skew is not None and abs(skew) < 2:
        out.write("  clock (时间戳): in step with the platform's (to the second of the answer's timestamp)\n")
    elif skew is not None:
        way = "ahead of" if skew > 0 else "behind"
        out.write(f"  clock (时间戳): the platform's clock is {abs(skew):.0f} s {way} this machine's "
                  "(from the answer's timestamp)\n")


def _signing(report: ProbeReport, out: TextIO) -> None:
    if not report.reachability.get("reached"):
        return
    out.write("\nSigning (签名)\n")
    out.write(f"  configured: {recipes.describe(report.configured_sign)}\n")
    if report.accepted_sign is not None and not report.sign_tried:
        out.write("  accepted: the configured recipe\n")
        return
    first = report.reachability.get("outcome", "")
    if report.accepted_sign is None and not report.sign_tried:
        return
    out.write(f"  refused: {first}\n")
    out.write(f"  tried {len(report.sign_tried)} of the catalogue's {report.catalogue_size - 1} recipes, likeliest "
              f"first: {recipes.summary([r for r, _a in report.sign_tried]).split(': ', 1)[-1]}\n")
    if report.accepted_sign is not None:
        answer = report.sign_tried[-1][1]
        out.write(f"  ACCEPTED after {len(report.sign_tried)} attempt(s): {recipes.describe(report.accepted_sign)}\n")
        out.write(f"    (the platform answered {answer.outcome()}: neither an auth nor a transport error, so the "
                  "signature passed)\n")
        return
    answers = Counter(a.outcome() for _r, a in report.sign_tried)
    out.write("  NOT FOUND: every recipe was refused. Answers: "
              + "; ".join(f"{text} x{count}" for text, count in answers.most_common(5)) + "\n")
    if report.sign_note:
        out.write(f"  {report.sign_note}\n")
    out.write("  canonical strings tried ({secret} is the app secret, {body} the sorted form):\n")
    for template in dict.fromkeys(r.template for r, _a in report.sign_tried):
        hashes = sorted({r.hash for r, _a in report.sign_tried if r.template == template})
        out.write(f"    {template}   [{', '.join(hashes)}]\n")


def _endpoints(report: ProbeReport, out: TextIO) -> None:
    out.write("\nEndpoints (接口), for each enabled job\n")
    for name, result in report.endpoints.items():
        _endpoint(name, result, out)


def _endpoint(name: str, result: EndpointResult, out: TextIO) -> None:
    w = out.write
    status = {"ok": "OK", "empty": "ANSWERED, NO RECORD", "failed": "FAILED", "not found": "NOT FOUND",
              "not tried": "not tried"}.get(result.status, result.status)
    where = ""
    if result.found is not None:
        where = f" {result.found.path} {result.found.param}".rstrip()
        if (result.found.path, result.found.param) != (result.configured.path, result.configured.param):
            where += f"  (configured: {result.configured.path} {result.configured.param})".rstrip(" )") + ")"
    w(f"  {name:<17} {status}{where}\n")
    if result.note:
        w(f"    {result.note}\n")
    if result.status != "ok" or len(result.tried) > 1:
        for tried in result.tried:
            records = "" if tried.records is None else f", {tried.records} record(s) for the id asked for"
            w(f"    tried {tried.path} {tried.param}: {tried.answer.outcome()}{records}\n".replace("  :", ":"))
    shape = result.shape
    if shape is None:
        return
    if shape.structure:
        w(f"    structure: {shape.structure}\n")
    for finding in shape.missing():
        w(f"    missing: {finding.key} ({finding.record}.{finding.field}, {finding.expected})\n")
    for finding in shape.wrong():
        w(f"    wrong type: {finding.key} is {finding.got}, e.g. {finding.example}; expected {finding.expected} "
          "(read as unknown)\n")
    tolerated = [f for f in shape.findings if f.problem == "tolerated"]
    if tolerated:
        w("    read although sent as another type: "
          + ", ".join(f"{f.key} ({f.got}, e.g. {f.example})" for f in tolerated) + "\n")
    for record, keys in shape.unknown.items():
        shown = list(keys.items())[:_UNKNOWN_SHOWN]
        more = len(keys) - len(shown)
        w(f"    not read in {record}: " + ", ".join(f"{k}={v}" for k, v in shown)
          + (f" and {more} more" if more > 0 else "") + "\n")
    for proposal in shape.proposals:
        state = "applied" if proposal.applied else "proposed, not applied (ambiguous)" if not proposal.unambiguous \
            else "proposed"
        w(f"    {state}: {proposal.setting}  ({proposal.missing} is missing, {proposal.wire_key} holds "
          f"{proposal.example})\n")


def _flow(report: ProbeReport, out: TextIO) -> None:
    flow = report.flow
    out.write("\nFlow unit (流量单位): an inference, not documented by the vendor\n")
    out.write(f"  configured: {report.configured_flow_unit}; inferred: {flow.unit or 'no inference'}"
              f" ({flow.confidence})\n")
    for line in flow.reasoning:
        out.write(f"  - {line}\n")
    if flow.unit is not None and flow.confidence != "likely" and flow.unit != report.configured_flow_unit:
        out.write("  not applied: the evidence does not decide; check a package size with the vendor\n")


def _settings(report: ProbeReport, out: TextIO) -> None:
    settings = report.discovered.settings()
    if settings:
        out.write("\nSettings found (platform section):\n")
        out.write("".join(f"  {line}\n" for line in dump_yaml({"platform": settings}).splitlines()))
    elif report.exit_code == 0:
        out.write("\nSettings: the configuration's platform settings work as they are\n")
    written = report.written
    if written.get("written"):
        comments = "comments kept" if written.get("comments_kept") else "comments could not be kept"
        out.write(f"  written to {written['path']} (the input with these settings applied; {comments})\n")
    elif written:
        out.write(f"  NOT written to {written['path']}: {written.get('reason')}\n")
    elif settings:
        out.write("  (--write-config OUT writes the configuration with these settings applied)\n")


def _verdict(report: ProbeReport, out: TextIO) -> None:
    if report.warnings:
        out.write("\nAttention\n")
        for warning in report.warnings:
            out.write(f"  - {warning}\n")
    if report.exit_code == 0:
        out.write(f"\nResult: OK, {report.end_to_end.get('detail')}\n")
    else:
        out.write("\nResult: FAILED\n")
        for problem in report.problems:
            out.write(f"  - {problem}\n")
