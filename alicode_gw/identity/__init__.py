"""Who is calling: customer key format, accounts and keys in PostgreSQL, authentication."""
