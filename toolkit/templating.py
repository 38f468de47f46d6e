"""The Jinja2 environment the renderers share: StrictUndefined, no autoescape, the
escaping filters of escape.py, and a user's --templates directory before the
backend's packaged folder (templates/<backend>/), its files replacing ours by name."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from . import escape, values
from .errors import AgentkitError

PACKAGED = Path(__file__).resolve().parent / "templates"


def template_dirs(backend: str, override: str | None = None) -> list[str]:
    packaged = PACKAGED
    if not packaged.is_dir():  # running from a source checkout without an install
        packaged = Path(__file__).resolve().parent.parent / "templates"
    return ([override] if override else []) + [str(packaged / backend)]


@lru_cache(maxsize=8)
def _environment(dirs: tuple[str, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(dirs)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # one plan() renders thousands of files: don't stat the templates for each
    )
    env.filters.update(sd_text=escape.systemd_text, sd_exec=escape.systemd_exec, span=values.format_span,
                       size=values.format_size)
    return env


def templates(backend: str, names: list[str], override: str | None = None) -> dict[str, jinja2.Template]:
    """The named templates of `backend`, loaded once; a missing or broken one is an AgentkitError."""
    env = _environment(tuple(template_dirs(backend, override)))
    try:
        return {name: env.get_template(name) for name in names}
    except jinja2.TemplateError as exc:
        raise AgentkitError(f"template: {exc}") from exc


def render_error(exc: jinja2.TemplateError) -> AgentkitError:
    return AgentkitError(f"template {getattr(exc, 'name', '') or ''}: {exc}")
