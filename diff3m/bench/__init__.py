"""Benchmarks: model inference against the published recipe, DICOM ingest, end-to-end turnaround."""
