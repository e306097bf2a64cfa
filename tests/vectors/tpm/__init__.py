"""The TPM attestation vectors and the script that captured them (``capture.py``)."""
