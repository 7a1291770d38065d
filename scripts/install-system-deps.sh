#!/bin/sh
# Debian packages the tests and the benchmark talk to: DCMTK (clients, storescp, dcmqrscp),
# Orthanc with its DICOMweb plugin (Debian's orthanc-dicomweb), Chromium (the browser the web
# viewer tests drive) and npm (scripts/fetch-ohif.sh gets the OHIF viewer with it). Installs
# only what is missing; needs root (or sudo).
set -eu
need=""
command -v storescu >/dev/null 2>&1 || need="$need dcmtk"
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need="$need orthanc"
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need="$need orthanc-dicomweb"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v npm >/dev/null 2>&1 || need="$need npm"
[ -z "$need" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $need >/dev/null
# The Debian package starts a system Orthanc on 4242/8042; the tests start their own.
if command -v service >/dev/null 2>&1; then $SUDO service orthanc stop >/dev/null 2>&1 || true; fi
