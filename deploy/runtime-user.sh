#!/bin/sh
# The user and data folders of both runtime images (the Dockerfile's slim and worker targets run
# it). The data folders belong to the cxr user, so named volumes mounted there start owned by it.
set -eu
groupadd --system --gid 10001 cxr
useradd --system --uid 10001 --gid cxr --home-dir /var/lib/cxr-triage \
    --shell /usr/sbin/nologin cxr
mkdir -p /var/lib/cxr-triage/spool /var/lib/cxr-triage/models /var/lib/cxr-triage/audit \
    /var/lib/cxr-triage/heatmaps /var/lib/cxr-triage/results
chown -R cxr:cxr /var/lib/cxr-triage
