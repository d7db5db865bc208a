"""PostgreSQL and Redis: connections, migrations, group commit, what "unavailable" means."""
