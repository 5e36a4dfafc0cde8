"""Database adapter: the only layer that speaks SQL."""
