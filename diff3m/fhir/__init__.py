"""diff3m.fhir package."""
