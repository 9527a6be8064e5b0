#!/bin/sh
# Certificates of the hub's domain from an ACME CA (Let's Encrypt by default), by HTTP-01 through
# nginx's webroot. Usage:
#   certificates.sh issue        first issuance, unless a real certificate exists already
#   certificates.sh renew [ARG]  one renewal pass (certbot renews only what is due); ARGs go to
#                                certbot, e.g. --force-renewal
#   certificates.sh loop         issue, then a renewal pass twice a day, forever (the container)
#
# nginx is never reloaded from here: it reloads itself when the certificate files change
# (nginx/reload-on-cert-change.sh), so a renewal pass that renews nothing costs no reload.
#
# Environment: DOMAIN, CERTBOT_EMAIL (or empty to register without one), CERTBOT_SERVER (ACME
# directory URL; default Let's Encrypt production), CERTBOT_CONFIG_DIR (/etc/letsencrypt),
# CERTBOT_WEBROOT (/var/www/certbot), CERTBOT_WORK_DIR, CERTBOT_LOGS_DIR, CERTBOT_KEY_TYPE (ecdsa),
# CERTBOT_RENEW_INTERVAL (seconds between passes, 43200), CERTBOT_ISSUE_RETRY (seconds, 60).
set -eu

: "${DOMAIN:?DOMAIN must be the public name of the hub}"
config_dir="${CERTBOT_CONFIG_DIR:-/etc/letsencrypt}"
webroot="${CERTBOT_WEBROOT:-/var/www/certbot}"
work_dir="${CERTBOT_WORK_DIR:-/var/lib/letsencrypt}"
logs_dir="${CERTBOT_LOGS_DIR:-/var/log/letsencrypt}"
renew_interval="${CERTBOT_RENEW_INTERVAL:-43200}"
issue_retry="${CERTBOT_ISSUE_RETRY:-60}"
live="$config_dir/live/$DOMAIN"

log() { echo "certificates: $*" >&2; }

certbot_cmd() {
  set -- --non-interactive --config-dir "$config_dir" --work-dir "$work_dir" --logs-dir "$logs_dir" "$@"
  if [ -n "${CERTBOT_SERVER:-}" ]; then set -- --server "$CERTBOT_SERVER" "$@"; fi
  certbot "$@"
}

has_real_certificate() { [ -f "$config_dir/renewal/$DOMAIN.conf" ]; }

issue() {
  if has_real_certificate; then
    log "$DOMAIN already has a certificate: nothing to issue"
    return 0
  fi
  if [ -f "$live/.placeholder" ]; then
    # nginx keeps serving the placeholder it loaded; certbot refuses to write over a lineage it
    # did not create.
    log "removing the placeholder certificate of $DOMAIN"
    rm -rf "$live"
  elif [ -e "$live" ]; then
    log "$live exists but certbot did not make it: move it away first"
    return 1
  fi
  if [ -n "${CERTBOT_EMAIL:-}" ]; then account="--email $CERTBOT_EMAIL"; else account="--register-unsafely-without-email"; fi
  mkdir -p "$webroot"
  # shellcheck disable=SC2086  # $account is two words or one
  certbot_cmd certonly --webroot --webroot-path "$webroot" --domain "$DOMAIN" --cert-name "$DOMAIN" \
    --key-type "${CERTBOT_KEY_TYPE:-ecdsa}" --agree-tos $account --keep-until-expiring
}

renew() {
  certbot_cmd renew --no-random-sleep-on-renew "$@"
}

loop() {
  until issue; do
    log "first issuance failed (is nginx up and $DOMAIN pointing here?): retrying in ${issue_retry}s"
    sleep "$issue_retry"
  done
  while :; do
    # twice a day by default, as Let's Encrypt asks, spread by up to a twelfth of the interval
    jitter=$(awk -v spread="$((renew_interval / 12 + 1))" 'BEGIN { srand(); print int(rand() * spread) }')
    sleep $((renew_interval + jitter))
    renew || log "renewal pass failed: trying again at the next pass"
  done
}

command="${1:-loop}"
[ "$#" -eq 0 ] || shift
case "$command" in
  issue) issue ;;
  renew) renew "$@" ;;
  loop) loop ;;
  *) log "unknown command $command (issue, renew or loop)"; exit 2 ;;
esac
