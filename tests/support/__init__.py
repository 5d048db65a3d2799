"""Reusable test support: offline PlatformIO, a real host ESPHome device, an OTA emulator.

These helpers are shared by the toolchain, daemon and mesh tests; the session fixtures
that wrap them live in the root ``tests/conftest.py``.
"""
