#!/bin/sh
# Certificates of the hub's domain from an ACME CA (Let's Encrypt by default), by HTTP-01 through
# nginx's webroot. Usage:
#   certificates.sh issue        first issuance, or a reissue when CERTBOT_SERVER names another
#                                CA than the one that issued the current certificate
#   certificates.sh renew [ARG]  one renewal pass (certbot renews only what is due); ARGs go to
#                                certbot, e.g. --force-renewal
#   certificates.sh loop         issue (retried with exponential back-off), then a renewal pass
#                                twice a day, forever (the container)
#
# nginx always has a certificate to load: it serves CONFIG_DIR/served/DOMAIN, a link to the
# self-signed placeholder until certbot's own lineage (live/DOMAIN) exists, switched by
# served_certificate.py only after an issuance succeeded. A failed challenge changes nothing
# nginx reads. nginx is never reloaded from here: it reloads itself when the certificate files
# change (nginx/reload-on-cert-change.sh), so a pass that renews nothing costs no reload.
#
# Environment: DOMAIN, CERTBOT_EMAIL (or empty to register without one), CERTBOT_SERVER (ACME
# directory URL; default Let's Encrypt production), CERTBOT_CONFIG_DIR (/etc/letsencrypt),
# CERTBOT_WEBROOT (/var/www/certbot), CERTBOT_WORK_DIR, CERTBOT_LOGS_DIR, CERTBOT_KEY_TYPE (ecdsa),
# CERTBOT_RENEW_INTERVAL (seconds between passes, 43200), CERTBOT_ISSUE_RETRY (first wait after a
# failed issuance, seconds, 60), CERTBOT_ISSUE_RETRY_MAX (cap of the doubling waits, 3600),
# CERTBOT_PUBLIC_DIR (where the served chain is copied for the hub's expiry metric), PYTHON.
set -eu

: "${DOMAIN:?DOMAIN must be the public name of the hub}"
config_dir="${CERTBOT_CONFIG_DIR:-/etc/letsencrypt}"
webroot="${CERTBOT_WEBROOT:-/var/www/certbot}"
work_dir="${CERTBOT_WORK_DIR:-/var/lib/letsencrypt}"
logs_dir="${CERTBOT_LOGS_DIR:-/var/log/letsencrypt}"
renew_interval="${CERTBOT_RENEW_INTERVAL:-43200}"
issue_retry="${CERTBOT_ISSUE_RETRY:-60}"
issue_retry_max="${CERTBOT_ISSUE_RETRY_MAX:-3600}"
# certbot's own default when no --server is given
server="${CERTBOT_SERVER:-https://acme-v02.api.letsencrypt.org/directory}"
renewal="$config_dir/renewal/$DOMAIN.conf"
served_certificate="$(dirname "$0")/served_certificate.py"

log() { echo "certificates: $*" >&2; }

certbot_cmd() {
  certbot --non-interactive --config-dir "$config_dir" --work-dir "$work_dir" --logs-dir "$logs_dir" \
    --server "$server" "$@"
}

serve() { CERTBOT_CONFIG_DIR="$config_dir" "${PYTHON:-python3}" "$served_certificate" "$1"; }

# The ACME directory that issued the current lineage, as certbot recorded it; empty without one.
lineage_server() {
  [ -f "$renewal" ] || return 0
  sed -n 's/^server[[:space:]]*=[[:space:]]*//p' "$renewal" | head -n 1
}

# Every step ends in `|| return 1`: `until issue` runs the function with errexit off.
issue() {
  serve placeholder || return 1
  set --
  current=$(lineage_server)
  if [ -n "$current" ]; then
    if [ "$current" = "$server" ]; then
      log "$DOMAIN already has a certificate from $server: nothing to issue"
      serve lineage || return 1
      return 0
    fi
    # e.g. staging -> production: the old certificate stays served until the new one exists.
    log "the certificate of $DOMAIN comes from $current but CERTBOT_SERVER is $server: reissuing"
    set -- --force-renewal
  fi
  if [ -n "${CERTBOT_EMAIL:-}" ]; then account="--email $CERTBOT_EMAIL"; else account="--register-unsafely-without-email"; fi
  mkdir -p "$webroot"
  # shellcheck disable=SC2086  # $account is two words or one
  certbot_cmd certonly --webroot --webroot-path "$webroot" --domain "$DOMAIN" --cert-name "$DOMAIN" \
    --key-type "${CERTBOT_KEY_TYPE:-ecdsa}" --agree-tos $account --keep-until-expiring "$@" || return 1
  serve lineage
}

renew() {
  certbot_cmd renew --no-random-sleep-on-renew "$@" || return 1
  serve lineage
}

loop() {
  delay="$issue_retry"
  until issue; do
    # Doubling waits up to a cap: a name not yet pointed here must not use up the CA's
    # failed-validation limit (Let's Encrypt: 5 per hour).
    log "issuance failed (is nginx up and $DOMAIN pointing here?): retrying in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2))
    [ "$delay" -le "$issue_retry_max" ] || delay="$issue_retry_max"
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
