"""Per-IP and per-key limits in Redis: the limiter, its node shares, Lua scripts, refusals,
the lean RESP client.
"""
