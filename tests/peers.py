"""Real DICOM peers for tests: Orthanc as a PACS and dcmtk's echoscu/storescu/storescp."""
