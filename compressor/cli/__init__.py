"""Thin CLI shells: parse flags, call library functions, print. No torch at import time."""
