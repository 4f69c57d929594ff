"""Reading a rendered report back: its figures' Vega-Lite specs and the text a reader sees."""

import html as html_
import json
import re


def specs(html: str) -> dict[str, dict]:
    """``{figure name: Vega-Lite spec}`` as embedded in the page."""
    m = re.search(r'<script type="application/json" id="attnlab-specs">(.*?)</script>', html, flags=re.S)
    return json.loads(m.group(1).replace("<\\/", "</")) if m else {}


def shown(html: str) -> str:
    """The page's text as a reader sees it: scripts and tags dropped, whitespace collapsed."""
    return " ".join(html_.unescape(re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", html, flags=re.S)).split())


def fetches(html: str) -> list[str]:
    """Elements of the page's markup (script bodies aside) that would load something: ``src=`` and ``<link>``."""
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1</script>", html, flags=re.S)
    return re.findall(r"<(?:script|img|iframe|audio|video|source)[^>]*\bsrc=[^>]*>|<link[^>]*>", markup)
