"""Alert rules over the fleet state, their lifecycle, and the notifiers that reach people.

Modules: `config` (the `alerts:` section), `expr` (the rule expression language), `rules` (compiled
rules, templates, the shipped default_rules.yaml), `alert` (one alert and its JSON forms), `engine`
(evaluation, lifecycle, persistence), `silences`, `matchers`, `notifiers/` (Alertmanager, Apprise,
webhook, log; routing, grouping, queues), `http` (the API routes), `cli` (`alerts`, `silence`).
Documented in docs/alerts.md.
"""
