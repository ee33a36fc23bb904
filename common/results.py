"""What a query came to, as the metrics, the query log and the dashboard all count it."""

from __future__ import annotations

# Response.source -> the `result` label.
RESULTS = {
    "upstream": "forwarded", "cache": "cached", "stale": "stale", "blocked": "blocked",
    "rewrite": "rewritten", "fixed": "blocked", "local": "local", "refused": "refused",
    "servfail": "servfail",
}
