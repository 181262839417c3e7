"""Fixtures that make synthetic chest radiographs and DICOM studies for the tests."""
