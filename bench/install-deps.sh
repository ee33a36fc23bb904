#!/bin/sh
# Installs what `make bench` needs from Debian's packages when it is missing: dnsperf, dnsmasq
# (dnsmasq-base: the binary without the system service), unbound, nsd; taskset comes with
# util-linux. Needs root (the bench machines run as root) or sudo.
set -e
missing=""
for tool in dnsperf:dnsperf dnsmasq:dnsmasq-base unbound:unbound nsd:nsd taskset:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
[ -z "$missing" ] && exit 0
echo "bench: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
