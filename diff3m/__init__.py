"""Diff3M node: DICOM/PACS integration for chest X-ray anomaly detection with Diff3M."""

__version__ = "0.1.0"
