"""The query log (embedded and Redis backends) and a device's data: what is held about it, and
its erasure from every place it lives (GDPR art. 15 and 17)."""
