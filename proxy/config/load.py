"""Loading a config: a file, a text, or the embedded default, into a `Config`.

Config is parsed once, strictly, into frozen dataclasses (`model`); every problem found
is reported at once (`errors.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path

from proxy.config.errors import ConfigError, ConfigProblem
from proxy.config.model import Config
from proxy.config.parse import parse_document
from proxy.config.walker import render_path
from proxy.config.yamlsrc import Source, YamlError, load

# proxy/default.yaml, a copy of config/default.yaml (a test keeps them equal); it sits one
# folder deep, like config/, so its schema modeline `../config/schema.json` works in both
DEFAULT_CONFIG_PATH = Path(__file__).parent.parent / "default.yaml"


def parse_text(text: str, file: str = "<config>", upstream_url: str | None = None) -> Config:
    """Parse a YAML document; raise ConfigError listing every problem."""

    try:
        source: Source = load(text, file)
    except YamlError as exc:
        line = exc.mark.line if exc.mark else None
        col = exc.mark.col if exc.mark else None
        problem = ConfigProblem(file, line, col, render_path(exc.path), exc.message)
        raise ConfigError([problem]) from None
    return parse_document(source, upstream_url)


def load_file(path: str | Path, upstream_url: str | None = None) -> Config:
    """Read and parse a config file; unreadable files are ConfigErrors too."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            [ConfigProblem(name, None, None, "", f"cannot read file: {reason}")]
        ) from None
    return parse_text(text, name, upstream_url)


def default_text() -> str:
    """The embedded default's YAML, as shipped (`tunnelguard suggest` edits a copy)."""
    return DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")


def load_default(upstream_url: str) -> Config:
    """The embedded default (SPEC section 3) in front of `upstream_url`."""
    return parse_text(default_text(), "default.yaml", upstream_url)
