"""The customer dashboard and the operator's /admin pages: server-rendered HTML on the
gateway's own server (docs/dashboard.md)."""
