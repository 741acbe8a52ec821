"""Alert rules over the fleet state, their lifecycle, and the notifiers that reach people.

Modules: `config` (the `alerts:` section), `expr` (the rule expression language), `rules` (compiled
rules, templates, the shipped default_rules.yaml), `alert` (one alert, its JSON forms and its link),
`i18n` (the words of messages in each language), `engine` (evaluation, lifecycle, persistence),
`silences`, `matchers`, `notifiers/` (Alertmanager, Apprise, webhook, log; routing, grouping, queues),
`http` (the alert and silence routes), `entities` (the fleet as rules read it, for `alerts test`),
`cli` (`alerts`, `silence`).
Documented in docs/alerts.md.
"""
