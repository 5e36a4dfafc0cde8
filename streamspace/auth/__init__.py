"""Authentication: password hashing, tokens, request principals."""
