-- The upstream credential pool: the operator's Anthropic API keys.
--
-- The secret has to be sent upstream, so it cannot be hashed: it is stored as is.
-- Protect the database (and its backups) accordingly. Nothing ever prints it in full.
-- Cooldowns are not stored here: they live in Redis (shared by the nodes, expiring on
-- their own). Only the operator-visible "disabled" state (401/403, billing error,
-- or an operator's decision) is durable.

CREATE TABLE upstream_credentials (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name <> ''),
    secret          text NOT NULL UNIQUE CHECK (secret <> ''),
    weight          integer NOT NULL DEFAULT 1 CHECK (weight > 0 AND weight <= 1000),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason text,
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);
