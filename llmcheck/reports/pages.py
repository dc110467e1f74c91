"""What every HTML page llmcheck writes shares: the autoescaping Jinja environment over the
packaged templates, the stylesheet, and the content-security policy that lets nothing load or run."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from markupsafe import Markup


def environment():
    """Jinja over ``llmcheck/reports/templates``, autoescaped: every user string is escaped."""
    from jinja2 import Environment, PackageLoader

    return Environment(
        loader=PackageLoader("llmcheck.reports", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )


def csp(css: str) -> str:
    """The page's policy: nothing may load or run; only the stylesheet with this exact hash applies."""
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode()
    return f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"


def render(template: str, extra_css: str = "", **context: Any) -> str:
    """``template`` rendered with the base stylesheet plus ``extra_css`` and the matching policy."""
    env = environment()
    css = env.loader.get_source(env, "report.css")[0] + extra_css
    return env.get_template(template).render(csp=Markup(csp(css)), css=Markup(css), **context)
