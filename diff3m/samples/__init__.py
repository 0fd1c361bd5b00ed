"""Bundled sample studies (DX For Presentation phantoms) for `diff3m send --samples`."""
