"""The reseller report (`iot-collector report`): per customer or any inventory label, for a calendar
month: devices and SIMs, data used (billed and real), top consumers, packages expiring and data
running out, suspended SIMs, the days each device was offline. `model` defines the figures, `live`
computes the current month in the running collector (its `ledger` keeps what the fleet state does
not), `influx` any month from InfluxDB, `render` writes a table, CSV or xlsx. docs/reports.md is the
operator's page.
"""
