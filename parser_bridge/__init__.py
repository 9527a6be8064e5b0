"""The parser bridge: two features of the hub and the two standalone services they talk to.

- `parse/`: the parse feature (protocol §7): routes, requests and their results, the job queue
  (Redis, or embedded in the hub without REDIS_URL), the page fetcher with its address policy.
- `exchange/`: the exchange feature (protocol §8): routes, requests, exact money arithmetic.
- `worker.py`: `python -m parser_bridge.worker`, the standalone parser (uses `parse/`).
- `exchange_service.py`: `python -m parser_bridge.exchange_service`, the standalone exchange
  service (uses `exchange/`).
- `feature.py`: both features as the composition root wires them.

The two features do not import each other; the services import only their own feature
(import-linter contracts in pyproject.toml).
"""
