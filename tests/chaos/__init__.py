"""Chaos tests: real workers, a real database, failures on purpose (see conftest)."""
