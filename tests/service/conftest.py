"""Service test fixtures live in tests/conftest.py (shared with the deployment tests)."""
