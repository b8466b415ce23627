"""tunnelguard: a reverse proxy that makes 200-tunnelled errors honest."""

from __future__ import annotations

__version__ = "0.1.0"
