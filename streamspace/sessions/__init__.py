"""Session lifecycle: the closed state machine, scheduling, culling."""
