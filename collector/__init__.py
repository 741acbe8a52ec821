"""iot-collector: polls a reseller IoT platform (agent open API v2.0) and turns it into telemetry."""

__version__ = "0.1.0"
