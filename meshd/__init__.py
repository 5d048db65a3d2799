"""meshd: a peer-to-peer build mesh daemon for ESPHome firmware."""

__version__ = "0.1.0"
