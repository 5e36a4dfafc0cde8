-- StreamSpace initial schema: accounts, templates, agents, sessions, the agent command
-- queue, session progress events, revoked tokens and the audit log.
-- Released migrations are never edited: add NNNN_next.sql instead.

CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    username VARCHAR(64) NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role VARCHAR(16) NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user')),
    display_name VARCHAR(128) NOT NULL DEFAULT '',
    email VARCHAR(254) NOT NULL DEFAULT '',
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    -- NULL: the configured default applies
    max_sessions INTEGER CHECK (max_sessions IS NULL OR max_sessions >= 0),
    -- tokens issued before this instant stop working (password change, disable)
    tokens_valid_after TIMESTAMPTZ NOT NULL DEFAULT to_timestamp(0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(63) NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'),
    display_name VARCHAR(128) NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    icon TEXT NOT NULL DEFAULT '',
    category VARCHAR(64) NOT NULL DEFAULT '',
    vnc_port INTEGER NOT NULL DEFAULT 5900 CHECK (vnc_port BETWEEN 1 AND 65535),
    cpu NUMERIC(8, 2) NOT NULL DEFAULT 1 CHECK (cpu > 0),
    memory_mb INTEGER NOT NULL DEFAULT 1024 CHECK (memory_mb > 0),
    env JSONB NOT NULL DEFAULT '{}'::jsonb,
    persistent_home BOOLEAN NOT NULL DEFAULT FALSE,
    idle_timeout_seconds INTEGER CHECK (idle_timeout_seconds IS NULL OR idle_timeout_seconds > 0),
    platforms JSONB NOT NULL DEFAULT '{}'::jsonb,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id VARCHAR(255) NOT NULL UNIQUE,
    platform VARCHAR(50) NOT NULL,
    region VARCHAR(100) NOT NULL DEFAULT '',
    status VARCHAR(50) NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    capacity JSONB NOT NULL DEFAULT '{}'::jsonb,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    token_hash TEXT,
    websocket_conn_id VARCHAR(255),
    protocol_version INTEGER,
    last_heartbeat TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_agents_agent_id ON agents (agent_id);
CREATE INDEX idx_agents_platform ON agents (platform);
CREATE INDEX idx_agents_status ON agents (status);
CREATE INDEX idx_agents_last_heartbeat ON agents (last_heartbeat);

CREATE TABLE sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template_id UUID REFERENCES templates (id) ON DELETE SET NULL,
    template_name VARCHAR(63) NOT NULL,
    name VARCHAR(128) NOT NULL DEFAULT '',
    state VARCHAR(32) NOT NULL DEFAULT 'pending' CHECK (state IN (
        'pending', 'scheduled', 'starting', 'running', 'hibernating', 'hibernated',
        'waking', 'terminating', 'terminated', 'failed', 'unreachable')),
    error TEXT,
    agent_id UUID REFERENCES agents (id) ON DELETE SET NULL,
    platform VARCHAR(50),
    region VARCHAR(100),
    requested_platform VARCHAR(50),
    requested_region VARCHAR(100),
    platform_metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    state_changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_activity TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_sessions_agent_id ON sessions (agent_id);
CREATE INDEX idx_sessions_platform ON sessions (platform);
CREATE INDEX idx_sessions_user_state ON sessions (user_id, state);
CREATE INDEX idx_sessions_state ON sessions (state);

CREATE TABLE agent_commands (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id UUID REFERENCES agents (id) ON DELETE CASCADE,
    session_id UUID REFERENCES sessions (id) ON DELETE CASCADE,
    command_type VARCHAR(50) NOT NULL,
    command_data JSONB NOT NULL DEFAULT '{}'::jsonb,
    status VARCHAR(50) NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'sent', 'ack', 'completed', 'failed', 'timeout', 'cancelled')),
    result JSONB,
    error TEXT,
    deadline TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ,
    acked_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ
);

CREATE INDEX idx_agent_commands_agent_id ON agent_commands (agent_id);
CREATE INDEX idx_agent_commands_session_id ON agent_commands (session_id);
CREATE INDEX idx_agent_commands_status ON agent_commands (status);

CREATE TABLE session_events (
    id BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    state VARCHAR(32) NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_session_events_session ON session_events (session_id, id);

CREATE TABLE revoked_tokens (
    jti UUID PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX idx_revoked_tokens_expires ON revoked_tokens (expires_at);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor_id UUID,
    actor_name VARCHAR(64) NOT NULL DEFAULT '',
    action VARCHAR(64) NOT NULL,
    target_type VARCHAR(32) NOT NULL DEFAULT '',
    target_id VARCHAR(255) NOT NULL DEFAULT '',
    client_addr VARCHAR(64) NOT NULL DEFAULT '',
    success BOOLEAN NOT NULL DEFAULT TRUE,
    details JSONB NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX idx_audit_log_created ON audit_log (created_at);
CREATE INDEX idx_audit_log_action ON audit_log (action);
CREATE INDEX idx_audit_log_actor ON audit_log (actor_id);
