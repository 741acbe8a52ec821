"""First contact with a real platform: `iot-collector probe` (which sign recipe, paths, parameters,
field names and flow unit the platform uses, found with a bounded number of read requests) and
`iot-collector capture` (the platform's raw answers stored as fixtures, secrets removed). See
docs/first-contact.md.

Modules: `recipes` (the sign recipe catalogue), `session` (bounded, paced, logged raw requests),
`shapes` (an answer compared with the endpoint modules' wire tables), `flowunit` (the flow unit
inferred from plan sizes), `settings` (the discovered settings written into a configuration),
`probe` (the probe and its report), `scrub` (secrets removed, ids pseudonymised) and `capture`.
"""
