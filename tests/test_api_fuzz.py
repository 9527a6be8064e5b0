"""The REST API under schemathesis: every operation of /api/openapi.json fuzzed with valid and
invalid data, then the stateful phase (chats, messages, parse and exchange requests followed
through the document's links), against a real hub on PostgreSQL and Redis.

Checks: no 5xx, every status, content type, header and body as documented, invalid data
refused, authentication enforced. And nothing in the hub's logs at ERROR or with a traceback.
Deterministic (the same cases every run) and bounded: a few examples per operation, a request
timeout that turns a hang into a failure, and a deadline on the whole run.

Run it alone: `.venv/bin/pytest tests/test_api_fuzz.py` (schemathesis' full report is printed
when it fails; `st replay <id>` needs the same hub, so reproduce with the printed curl).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hub.settings import Settings
from tests.conftest import RunningHub, backend_settings, free_port, register, serve_hub

ST = str(Path(sys.executable).with_name("st"))
RUN_DEADLINE = 300.0  # a hang guard: ~30 s of CPU; 100-180 s of wall time at load 9-13
MAX_EXAMPLES = 15  # per operation and phase
HUB_API_KEY = "test-hub-api-key"
PARSER_TOKEN = "test-parser-token"
EXCHANGE_TOKEN = "test-exchange-token"
STREAM_OPERATION = "get_api_v1_stream"  # left out: see the configuration
SERVICE_OPERATIONS = (("/api/v1/publish", HUB_API_KEY),
                      ("/api/v1/parse/{request_id}/result", PARSER_TOKEN))
# Text the database cannot store (NUL, lone surrogates) is another piece of work of issue 13
# (item 1); a 500 it causes is named as such in the failure message.
# Strings that broke hubs before, mixed into the generated ones so that a short run meets them.
HOSTILE_STRINGS = ("a\x00b", "\x00", "\u202eevil", "' OR '1'='1", "%00", "../../etc/passwd",
                   "\U0001f600" * 3, "\r\nSet-Cookie: x=1", "<script>x</script>", "\\u0000")
STORAGE_ERRORS = ("invalid byte sequence for encoding", "surrogates not allowed")
TEXT_HINTS = ("\\u0000", "\\x00", "\\ud8", "\\ud9", "\\uda", "\\udb", "\\udc", "\\udd", "\\ude", "\\udf")


def _config(token: str, report: Path) -> str:
    """The schemathesis configuration (TOML): the user's token for every call, the service
    credentials for theirs. Two checks are left out, each for a reason of the contract:
    `positive_data_acceptance` (a schema-valid body naming an unknown user, chat or message is
    a 422 by the protocol) and, for the service calls, `missing_required_header` (schemathesis
    expects 401 for a missing Authorization; §2 says a missing service credential is 403)."""
    operations = "".join(
        f'\n[[operations]]\ninclude-path = "{path}"\n'
        f'headers = {{ Authorization = "Bearer {secret}" }}\n'
        "checks.missing_required_header.enabled = false\n"
        for path, secret in SERVICE_OPERATIONS
    )
    return f'''
headers = {{ Authorization = "Bearer {token}" }}
workers = 1
request-timeout = 10
continue-on-failure = true
max-failures = 50

[generation]
deterministic = true
max-examples = {MAX_EXAMPLES}
unique-inputs = true
dictionaries.string = {{ dictionary = "hostile", probability = 0.2 }}

[dictionaries.hostile]
values = [{", ".join(json.dumps(value, ensure_ascii=False) for value in HOSTILE_STRINGS)}]

[phases.stateful]
max-steps = 40

[checks]
enabled = true

[checks.positive_data_acceptance]
enabled = false

[reports.junit]
enabled = true
path = "{report}"
{operations}
[[operations]]
include-path = "/api/exchange_result"
parameters = {{ "body.token" = "{EXCHANGE_TOKEN}" }}

# Leaving is fuzzed alone but kept out of sequences: after it the chat is a 404 for the leaver
# (the contract), which schemathesis reads as "created resource not found" (it counts only a
# DELETE of the resource itself as removing it).
[[operations]]
include-path = "/api/v1/chats/{{chat_id}}/members/me"
phases.stateful.enabled = false

# The event stream answers for as long as its client reads (request-timeout would call that a
# hang); tests/test_stream.py covers it, its refusals (401, 422, 429) included.
[[operations]]
include-operation-id = "{STREAM_OPERATION}"
enabled = false
'''


class LogProblems(logging.Handler):
    """Collects every record at ERROR or above, and every record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info or record.stack_info:
            self.records.append(record)

    def report(self) -> str:
        """The first records, each with its traceback."""
        return "\n".join(self.format(record) for record in self.records[:10])


@pytest.fixture
def log_problems() -> Iterator[LogProblems]:
    handler = LogProblems()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture
def fuzz_settings(request: pytest.FixtureRequest) -> Settings:
    """PostgreSQL and Redis with every optional feature on: the exchange service's URL points
    at a closed port (hand-overs fail and are retried, as when it is down). The sign-in limits
    are lifted so that register, login and refresh get fuzzed past their first few calls (their
    429s have tests of their own); PARSE_MAX_PENDING stays, so its 429 is checked against the
    document too."""
    return replace(backend_settings("postgres", request), log_level="INFO",
                   exchange_service_url=f"http://127.0.0.1:{free_port()}",
                   auth_rate_limit=1_000_000, login_failure_limit=1_000_000)


@pytest.fixture
async def fuzz_hub(fuzz_settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(fuzz_settings) as hub:
        yield hub


def _explain(output: str, logged: str) -> str:
    failures = output[output.find("FAILURES"):] if "FAILURES" in output else output[-20000:]
    cases = re.split(r"\n_{3,} ", failures)
    stored_bad_text = any(marker in logged for marker in STORAGE_ERRORS) or any(
        "Server error" in case and any(m in case for m in TEXT_HINTS) for case in cases)
    hint = ("A 500 came from a NUL byte or a lone surrogate: text the database cannot store "
            "must be cleaned or refused with 422 (issue 13, item 1).\n" if stored_bad_text else "")
    return (f"schemathesis found problems:\n{hint}{failures[:20000]}\n"
            f"The hub logged:\n{logged or '(nothing at ERROR)'}")


@pytest.mark.timeout(RUN_DEADLINE + 30)
async def test_schemathesis_finds_no_error(fuzz_hub: RunningHub, log_problems: LogProblems,
                                           tmp_path: Path) -> None:
    account = await register(fuzz_hub.http)
    await register(fuzz_hub.http)  # someone to add to chats and publish to
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(account.access_token, tmp_path / "junit.xml"))
    process = await asyncio.create_subprocess_exec(
        ST, "--no-color", "--config-file", str(config), "run",
        f"{fuzz_hub.base_url}/api/openapi.json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        async with asyncio.timeout(RUN_DEADLINE):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"schemathesis did not finish within {RUN_DEADLINE:.0f} s: the hub hangs "
                    "or the run grew (lower MAX_EXAMPLES)")
    output = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(output)
    assert process.returncode == 0, _explain(output, log_problems.report())
    documented = sum(len(operations) for operations in
                     (await fuzz_hub.http.get("/api/openapi.json")).json()["paths"].values())
    tested = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert tested is not None, output[-3000:]
    # every operation but GET /api/openapi.json, which schemathesis leaves out as the schema's own,
    # and the event stream, which the configuration leaves out
    selected, total = str(documented - 2), str(documented - 1)
    assert tested.groups() == (selected, total, selected), output[-3000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"\u2705 {phase}" in output, f"the {phase} phase did not run and pass:\n{output[-3000:]}"
    assert not log_problems.records, (
        "the hub logged errors or tracebacks while being fuzzed:\n" + log_problems.report())
