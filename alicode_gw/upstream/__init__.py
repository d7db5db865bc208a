"""The upstream Anthropic API: the HTTP client and attempt loop, the credential pool,
relaying answers, SSE.
"""
