"""diff3m.node package."""
