#!/bin/sh
# Run by the official image's entrypoint before nginx starts: watch the certificate in the
# background, reloading nginx only when certbot changed it (see reload-on-cert-change.sh).
set -eu
/opt/hub-nginx/reload-on-cert-change.sh &
