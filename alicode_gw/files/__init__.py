"""The Files API: uploads stored in PostgreSQL per account, listed, downloaded, deleted
and purged, and inlined into the requests that reference them (docs/files.md)."""
