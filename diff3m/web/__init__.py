"""diff3m.web package."""
