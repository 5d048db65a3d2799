"""Which receivers' esphome versions count as compatible with ours (DESIGN: scheduling).

A leaf module on purpose: the settings (``meshd.config``, which the CLI loads) and the
mesh scheduler both need the policy, and the CLI must not import the mesh to parse a
flag. It imports nothing of meshd.
"""

from __future__ import annotations

import enum


class VersionPolicy(enum.StrEnum):
    PROVISION = "provision"  # exactly ours; a receiver that provisions it counts too
    ANY = "any"
    RELEASE = "release"  # same YYYY.M release series
    EXACT = "exact"  # prefer identical versions, fall back to local
    EXACT_REQUIRED = "exact_required"  # identical, or fail rather than build locally


def release_of(version: str) -> str:
    """``2026.6.5`` → ``2026.6``; a version without a dot is its own release."""
    parts = version.split(".")
    return ".".join(parts[:2])


def compatible(local_version: str, peer_version: str | None, policy: VersionPolicy) -> bool:
    """May a receiver running ``peer_version`` build for a node running ``local_version``?"""
    if policy is VersionPolicy.ANY:
        return True
    if peer_version is None:
        return False
    if policy is VersionPolicy.RELEASE:
        return release_of(peer_version) == release_of(local_version)
    return peer_version == local_version
