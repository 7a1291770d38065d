"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS and WADO-URI over the one catalogue."""
