"""certbot's failures and changes of mind, against real pebbles: a first issuance that fails (the
name does not point here yet) leaves nginx a certificate to load, even across a restart, and is
retried with doubling waits; switching CERTBOT_SERVER (staging -> production) reissues from the
new CA instead of keeping the old CA's certificate."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.acme import (
    CERTIFICATES,
    ChallengeDns,
    Pebble,
    certificates,
    certificates_env,
    running_acme_nginx,
    running_pebble,
    served_certificate,
    wait_for_new_certificate,
)
from tests.deploy.conftest import DOMAIN, client_tls, public_client
from tests.deploy.processes import HubProcess, die_with_parent, free_port, stop
from tests.deploy.tls_ca import ThrowawayCA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http_port() -> int:
    """Where nginx answers HTTP-01 for both pebbles."""
    return free_port()


@pytest.fixture(scope="module")
def staging(deploy_root: Path, test_ca: ThrowawayCA, challenge_dns: ChallengeDns,
            http_port: int) -> Iterator[Pebble]:
    with running_pebble(deploy_root / "pebble-staging", test_ca, http_port, challenge_dns) as ca:
        yield ca


@pytest.fixture(scope="module")
def production(deploy_root: Path, test_ca: ThrowawayCA, challenge_dns: ChallengeDns,
               http_port: int) -> Iterator[Pebble]:
    with running_pebble(deploy_root / "pebble-production", test_ca, http_port, challenge_dns) as ca:
        yield ca


async def _waits_logged(log: Path, count: int, seconds: float) -> list[int]:
    async with asyncio.timeout(seconds):
        while True:
            waits = [int(wait) for wait in re.findall(r"retrying in (\d+)s", log.read_text(errors="replace"))]
            if len(waits) >= count:
                return waits
            await asyncio.sleep(0.2)


async def test_a_failed_first_issuance_keeps_a_loadable_certificate_and_backs_off(
        deploy_root: Path, deploy_hub: HubProcess, test_ca: ThrowawayCA, challenge_dns: ChallengeDns,
        staging: Pebble, http_port: int) -> None:
    root = deploy_root / "acme-failing"
    with running_acme_nginx(root, f"127.0.0.1:{deploy_hub.port}", http_port) as nginx:
        placeholder = await served_certificate(nginx)
        assert placeholder.issuer == placeholder.subject
        challenge_dns.point(DOMAIN, "127.0.0.9")  # the name does not point at this server yet
        loop: subprocess.Popen[bytes] | None = None
        try:
            failed = await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, staging, check=False)
            assert "Some challenges have failed" in failed
            # nginx restarts (a crash, a host reboot) and still has a certificate to load.
            nginx.stop()
            nginx.start()
            assert (await served_certificate(nginx)).serial_number == placeholder.serial_number

            # The container's loop retries after 1 s, then doubles the wait up to the cap.
            env = certificates_env(nginx, test_ca, staging, CERTBOT_ISSUE_RETRY="1",
                                   CERTBOT_ISSUE_RETRY_MAX="4")
            log = root / "certbot-loop.log"
            with log.open("ab") as out:
                loop = subprocess.Popen(["sh", str(CERTIFICATES), "loop"], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
            waits = await _waits_logged(log, 4, seconds=120)
            assert waits[:4] == [1, 2, 4, 4], waits
            assert (await served_certificate(nginx)).serial_number == placeholder.serial_number
        finally:
            challenge_dns.clear(DOMAIN)
        try:
            # The name points here now: the next attempt succeeds and nginx serves the real one.
            issued = await wait_for_new_certificate(nginx, placeholder, seconds=90)
            assert issued.issuer != issued.subject
        finally:
            if loop is not None:
                stop(loop, timeout=10)


async def test_switching_certbot_server_reissues_from_the_new_ca(
        deploy_root: Path, deploy_hub: HubProcess, test_ca: ThrowawayCA, staging: Pebble, production: Pebble,
        http_port: int) -> None:
    root = deploy_root / "acme-switch"
    roots = {}
    for name, ca in (("staging", staging), ("production", production)):
        roots[name] = root / f"{name}-root.pem"
        roots[name].parent.mkdir(parents=True, exist_ok=True)
        roots[name].write_text(await asyncio.to_thread(ca.root_pem, test_ca))
    assert roots["staging"].read_text() != roots["production"].read_text()
    with running_acme_nginx(root, f"127.0.0.1:{deploy_hub.port}", http_port) as nginx:
        placeholder = await served_certificate(nginx)
        await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, staging)
        from_staging = await wait_for_new_certificate(nginx, placeholder)
        again = await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, staging)
        assert "nothing to issue" in again

        # The operator sets CERTBOT_SERVER to production and restarts certbot.
        switched = await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, production)
        assert f"comes from {staging.directory_url}" in switched
        from_production = await wait_for_new_certificate(nginx, from_staging)
        renewal = (nginx.root / "letsencrypt" / "renewal" / f"{DOMAIN}.conf").read_text()
        assert f"server = {production.directory_url}" in renewal
        async with public_client(nginx.https_port, client_tls(roots["production"])) as http:
            assert (await http.get("/healthz")).status_code == 200
        async with public_client(nginx.https_port, client_tls(roots["staging"])) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get("/healthz")
        assert from_production.issuer != from_staging.issuer

        settled = await asyncio.to_thread(certificates, ["issue"], nginx, test_ca, production)
        assert "nothing to issue" in settled
