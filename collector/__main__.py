"""`python -m collector` is the same as the `iot-collector` command."""

from collector.cli import main

raise SystemExit(main())
