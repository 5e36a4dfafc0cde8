"""The REST API under /api/v1: HTTP shape, validation and status codes (no SQL here)."""
