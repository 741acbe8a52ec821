"""Where points go: InfluxDB (v2 and v1 write APIs), a line-protocol file, and the durable spool in
front of every sink.

- `points`: observations -> line protocol (the schema, docs/schema.md)
- `spool`: the append-only, crash-safe queue on disk, one cursor per sink
- `pipeline`: `SinkPipeline`, the spool plus one drain task per enabled sink (what the daemon uses)
- `base`: the delivery contract (dead-letter on 400, split on 413, retry on 429/5xx/network)
- `influx`: `InfluxV2Sink` (influxdb-client) and `InfluxV1Sink` (/write); `file`: `FileSink`
- `rotating`: size-rotated files (file sink, dead letters); `config`: their configuration
"""
