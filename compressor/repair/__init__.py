"""Repair after removal: make a cut model do what the full one did (``linear``, ``distill``)."""
