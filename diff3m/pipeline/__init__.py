"""diff3m.pipeline package."""
