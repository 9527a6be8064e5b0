"""The parse feature as the composition root sees it: the routes of protocol §7 and their loops.

With REDIS_URL, parse jobs go to Redis for `python -m parser_bridge.worker` processes (the
protocol of seed 001, keys prefixed with REDIS_CHANNEL_PREFIX). Without it (one embedded
process), the hub fetches pages itself with the same fetcher and address policy, so the whole
flow works with no other process; PARSER_ALLOW_PRIVATE=1 lets that embedded fetcher reach
private addresses, for development only.
"""

from __future__ import annotations

from typing import Any

from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature, Loop
from hub.identity import Authenticator
from hub.push_rules import Notice, PushRule
from hub.settings import Settings
from parser_bridge.parse.api import ParseApi
from parser_bridge.parse.events import PARSE_COMPLETED
from parser_bridge.parse.fetch import PageFetcher
from parser_bridge.parse.job_queue import JobQueue
from parser_bridge.parse.queue_embedded import EmbeddedJobQueue
from parser_bridge.parse.requests import ParseRequests

RESULTS_INTERVAL = 0.25  # results are picked up well within the promised second


def parse_feature(settings: Settings, db: Database, events: EventBus,
                  authenticator: Authenticator) -> Feature:
    """Build the feature; nothing connects until the app's loops start."""
    queue: JobQueue
    if settings.redis_url is not None:
        from parser_bridge.parse.queue_redis import RedisJobQueue

        queue = RedisJobQueue(settings.redis_url, settings.redis_channel_prefix,
                              cluster=settings.redis_cluster)
    else:
        queue = EmbeddedJobQueue(PageFetcher(allow_private=settings.parser_allow_private))
    parse = ParseRequests(db, events, queue, settings.parse_timeout, settings.parse_max_pending)
    return Feature(
        push_rules={PARSE_COMPLETED.name: PushRule(describe=describe_parse)},
        routes=ParseApi(parse, authenticator, settings.parser_service_token).routes(),
        loops=(
            *queue.loops(),
            Loop("parse results", parse.collect_results, RESULTS_INTERVAL),
            Loop("parse dispatch", parse.dispatch_unqueued, 1.0),
            Loop("parse timeouts", parse.expire_overdue, 1.0),
        ),
        events=(PARSE_COMPLETED,),
    )


def describe_parse(data: dict[str, Any]) -> Notice:
    """A `parse.completed` push: the page's title, or why it failed; one topic per request."""
    url = str(data["url"])
    if data["status"] == "success":
        return Notice("Page parsed", str(data.get("title") or url), f"parse-{int(data['request_id'])}")
    return Notice("Page parse failed", f"{url}: {data.get('error')}", f"parse-{int(data['request_id'])}")
