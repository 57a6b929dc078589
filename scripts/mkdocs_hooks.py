"""mkdocs hooks: links from the documentation to repository files outside ``docs/``.

The pages under ``docs/`` cite evidence where it lives (``results/...``, ``benchmarks/results/...``, ``configs/``,
the README) with relative links that work when the files are browsed in the repository. The site holds ``docs/``
only, so such a link would be broken there. These hooks

- copy every image that a page shows from outside ``docs/`` (a results plot) into the site, under
  ``assets/repository/``, and point the image there;
- turn every other link to an existing repository file outside ``docs/`` into a link to that file in the
  repository when ``repo_url`` is set in ``mkdocs.yml``, else into its text followed by the path in code.

A link to a missing file is left as it is, so ``mkdocs build --strict`` still reports it.

Docstrings cross-reference with Sphinx roles (``:func:`compress```); the API pages show the name in code without
the role (``~a.b.C`` shown as ``C``, as Sphinx does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mkdocs.structure.files import File

LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
ASSETS = "assets/repository"
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")
IMAGE_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp"}


def _outside(target: str, page_dir: Path, docs: Path, root: Path) -> tuple[Path, str] | None:
    """The repository file a relative link points to, and its anchor, when it lies outside ``docs/``."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return None
    path, _, anchor = target.partition("#")
    resolved = (page_dir / path).resolve()
    if resolved.is_relative_to(docs) or not resolved.is_relative_to(root) or not resolved.exists():
        return None
    return resolved, anchor


def _dirs(config) -> tuple[Path, Path]:
    docs = Path(config.docs_dir).resolve()
    return docs, Path(config.config_file_path).resolve().parent


def on_files(files, config):
    """Add the images that pages show from outside ``docs/`` to the site."""
    docs, root = _dirs(config)
    wanted = {}
    for file in files.documentation_pages():
        page_dir = Path(file.abs_src_path).parent
        for bang, _, target in LINK.findall(Path(file.abs_src_path).read_text(encoding="utf-8")):
            found = _outside(target, page_dir, docs, root)
            if bang and found and found[0].suffix.lower() in IMAGE_SUFFIXES:
                wanted[found[0]] = f"{ASSETS}/{found[0].relative_to(root).as_posix()}"
    for source, uri in sorted(wanted.items()):
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Rewrite the links of one page that leave ``docs/`` (see the module docstring)."""
    docs, root = _dirs(config)
    page_dir = Path(page.file.abs_src_path).parent
    repo_url = (config.repo_url or "").rstrip("/")

    def fix(match: re.Match) -> str:
        bang, text, target = match.groups()
        found = _outside(target, page_dir, docs, root)
        if found is None:
            return match.group(0)
        source, anchor = found
        rel = source.relative_to(root).as_posix()
        if bang and source.suffix.lower() in IMAGE_SUFFIXES:
            return f"![{text}]({os.path.relpath(docs / ASSETS / rel, page_dir).replace(os.sep, '/')})"
        if repo_url:
            kind = "tree" if source.is_dir() else "blob"
            return f"[{text}]({repo_url}/{kind}/HEAD/{rel}{'#' + anchor if anchor else ''})"
        shown = rel + ("/" if source.is_dir() else "")
        return f"`{shown}`" if text.strip("`") == shown else f"{text} (`{shown}`)"

    return LINK.sub(fix, markdown)


def on_page_content(html, page, config, files):
    """Drop the Sphinx role in front of a cross-reference rendered from a docstring."""
    return ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)
