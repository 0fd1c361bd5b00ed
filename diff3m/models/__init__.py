"""diff3m.models package."""
