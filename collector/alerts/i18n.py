"""The words of alert notifications in each language of `alerts.language` (`zh`, `en`): the counts
in a message's title, the sections of a grouped message's text, how a time, an unknown value or a
boolean reads in it. The default rules' own text is in `default_rules.yaml` (`translations:`);
times are shown in `alerts.timezone` through `collector.formats.local_time`.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.formats import LANGUAGES, Language, local_time


@dataclass(frozen=True, slots=True)
class Words:
    """Fixed text of one language; `{n}`, `{time}` and `{url}` are filled in."""

    firing_count: str
    resolved_count: str
    firing_header: str
    resolved_header: str
    more: str
    since: str
    resolved_at: str
    link: str
    unknown: str
    yes: str
    no: str
    alerts: str


WORDS: dict[str, Words] = {
    "en": Words(firing_count="FIRING:{n}", resolved_count="RESOLVED:{n}", firing_header="Firing ({n}):",
                resolved_header="Resolved ({n}):", more="- ... and {n} more", since=" (since {time})",
                resolved_at=" (resolved {time})", link="Alerts: {url}", unknown="unknown", yes="true", no="false",
                alerts="alerts"),
    # Every title holds 告警 (firing: 告警, resolved: 告警恢复): one DingTalk robot keyword matches them all.
    "zh": Words(firing_count="告警:{n}", resolved_count="告警恢复:{n}", firing_header="告警中（{n}）：",
                resolved_header="已恢复（{n}）：", more="- …… 另有 {n} 条", since="（{time} 起）",
                resolved_at="（{time} 恢复）", link="详情：{url}", unknown="未知", yes="是", no="否", alerts="告警"),
}
assert set(WORDS) == set(LANGUAGES)


@dataclass(frozen=True, slots=True)
class Locale:
    """How notifications read: the language and the time zone of their times."""

    language: Language = "zh"
    timezone: str = "Asia/Shanghai"

    @property
    def words(self) -> Words:
        return WORDS[self.language]

    def time(self, ts: float | None) -> str:
        """A Unix time on the reader's clock: `11月30日 11:25` or `2026-11-30 11:25 CST`."""
        return local_time(ts, self.timezone, self.language) or self.words.unknown


ENGLISH = Locale("en", "Asia/Shanghai")
