"""OpenAI Chat Completions <-> Anthropic Messages translation (pure, no I/O)."""
