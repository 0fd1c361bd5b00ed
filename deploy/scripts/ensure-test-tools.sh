#!/usr/bin/env bash
# Install the real peers the test suite talks to, when missing: dcmtk (storescu/echoscu/storescp),
# dicom3tools (dciodvfy), Orthanc (+DICOMweb), redis-server, PostgreSQL server binaries,
# Chromium (web UI tests) and the dev FHIR server's npm packages.
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v node >/dev/null || need+=(nodejs npm)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing test tools: ${need[*]} (run as root or install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing test tools: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The dev FHIR server (a real FHIR R4 engine) and its npm packages.
if [ -f deploy/fhir-dev-server/package.json ] && [ ! -d deploy/fhir-dev-server/node_modules ]; then
  (cd deploy/fhir-dev-server && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "test tools ready"
