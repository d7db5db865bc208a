"""The exact-match response cache (opt-in): ``keys`` (pure: cache key, entry key,
entry encryption), ``store`` (the Redis I/O and the pipeline's hook), ``replay`` (a hit
written to the client). Named ``respcache`` because "cache" in this gateway already
means Anthropic's prompt caching (``cache_control``, cache read/write tokens)."""
