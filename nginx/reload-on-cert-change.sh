#!/bin/sh
# Reload nginx when, and only when, the certificate it serves changed on disk.
#
# A reload starts new workers and lets the old ones finish their connections, so open WebSockets
# survive it; still, a blind periodic reload would churn workers for nothing. This loop compares
# a fingerprint of the certificate and key files with the one nginx last loaded, and reloads only
# after certbot wrote a new pair and `nginx -t` accepts it (certbot swaps the two links one after
# the other: a half-written pair is never loaded).
#
# Environment: DOMAIN, NGINX_CERTS_DIR (/etc/letsencrypt), CERT_WATCH_INTERVAL (seconds, 60),
# NGINX_BIN (nginx), NGINX_ARGS (extra arguments for nginx -t and -s reload, e.g. -p/-c).
set -eu

: "${DOMAIN:?DOMAIN must name the certificate to watch}"
served="${NGINX_CERTS_DIR:-/etc/letsencrypt}/served/${DOMAIN}"
interval="${CERT_WATCH_INTERVAL:-60}"
nginx_bin="${NGINX_BIN:-nginx}"
nginx_args="${NGINX_ARGS:-}"

log() { echo "reload-on-cert-change: $*" >&2; }

fingerprint() {
  # cksum is POSIX (busybox and coreutils alike); it detects change, it does not authenticate.
  cat "$served/fullchain.pem" "$served/privkey.pem" 2>/dev/null | cksum
}

loaded=$(fingerprint)
log "watching $served every ${interval}s"
while sleep "$interval"; do
  current=$(fingerprint)
  [ "$current" != "$loaded" ] || continue
  sleep 1
  [ "$(fingerprint)" = "$current" ] || continue
  # shellcheck disable=SC2086  # NGINX_ARGS is a list of arguments
  if "$nginx_bin" $nginx_args -t -q; then
    # shellcheck disable=SC2086
    "$nginx_bin" $nginx_args -s reload
    loaded=$current
    log "certificate changed: nginx reloaded"
  else
    log "certificate changed but nginx -t fails: keeping the loaded one, retrying"
  fi
done
