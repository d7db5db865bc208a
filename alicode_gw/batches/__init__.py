"""Message Batches (``/v1/messages/batches``) on the upstream's own batch API, at the
batch price; see docs/batches.md."""
