-- Session core: a `stopped` state (the session's application ended by itself, e.g. `exit`
-- in a terminal: not a failure), and what the idle sweep needs to back off after a failed
-- idle hibernation instead of retrying it every sweep.

ALTER TABLE sessions DROP CONSTRAINT sessions_state_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_state_check CHECK (state IN (
    'pending', 'scheduled', 'starting', 'running', 'hibernating', 'hibernated',
    'waking', 'terminating', 'terminated', 'failed', 'unreachable', 'stopped'));

-- idle hibernations tried in a row without success, and when the next may be tried
ALTER TABLE sessions ADD COLUMN idle_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN idle_retry_at TIMESTAMPTZ;

-- the sweeps look commands up by status and deadline, agents' commands by status
CREATE INDEX idx_agent_commands_agent_status ON agent_commands (agent_id, status);
CREATE INDEX idx_agent_commands_in_flight_deadline ON agent_commands (deadline)
    WHERE status IN ('pending', 'sent', 'ack');
