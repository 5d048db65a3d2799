"""The one rule for a ccache remote-storage key that crosses the link.

ccache's HTTP and file backends name an entry ``<2 chars>/<rest>`` (its digest in
lower-case hex/base32hex). Both ends check every key against this before it becomes a
path or a URL, so a peer can never name ``../`` or anything outside the cache.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"[0-9a-z]{2}/[0-9a-z]{8,100}")


def valid_cache_key(key: str) -> bool:
    """True for ``ab/cdef0123...`` (lower-case letters and digits only, one slash)."""
    return _KEY.fullmatch(key) is not None
