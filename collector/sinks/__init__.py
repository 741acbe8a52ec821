"""Where points go: InfluxDB (v2 and v1 write APIs), a line-protocol file, and the durable spool in
front of every remote sink."""
