#!/usr/bin/env bash
# Writes the dashboards in the shape Grafana's file provisioning needs.
#
#   grafana/provision-dashboards.sh DEST [CURRENCY_UNIT]
#
# The JSON files in grafana/dashboards/ are in the shape Grafana's "Import dashboard" page takes: it
# asks for the data source (`__inputs`: DS_INFLUXDB or DS_PROMETHEUS) and the currency unit
# (VAR_CURRENCY) and puts the answers in place of ${DS_INFLUXDB}, ${DS_PROMETHEUS}, ${VAR_CURRENCY}.
# Provisioning reads the files as they are, so this script makes those replacements: the data
# sources of grafana/provisioning/datasources/iot-collector.yaml (uids iot-influxdb, iot-prometheus)
# and CURRENCY_UNIT, a Grafana unit (default currencyCNY, shown as ¥; the platform does not document
# its currency: currencyUSD, currencyEUR or suffix:元 are others). DEST is the provider's folder
# (grafana/provisioning/dashboards/iot-collector.yaml: /var/lib/grafana/dashboards/iot-collector).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dest=${1:?usage: $0 DEST [CURRENCY_UNIT]}
unit=${2:-currencyCNY}
case "$unit" in
  ''|*[\|\\\&\"]*) echo "$0: a currency unit without | \\ & or \": got '$unit'" >&2; exit 2 ;;
esac

mkdir -p "$dest"
for dashboard in "$here"/dashboards/*.json; do
  out="$dest/$(basename "$dashboard")"
  sed -e 's/\${DS_INFLUXDB}/iot-influxdb/g' -e 's/\${DS_PROMETHEUS}/iot-prometheus/g' \
      -e "s|\${VAR_CURRENCY}|$unit|g" "$dashboard" >"$out.tmp"
  mv "$out.tmp" "$out"
done
