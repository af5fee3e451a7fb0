"""The documentation site: every ```python block runs, the API pages list every public name, and the built
site works offline (every script, stylesheet and image it loads, MathJax included, is a file of the site).

The blocks of one page run in order in one namespace (``__name__ == "__main__"``), in a temporary working
directory, so a page reads like a script and may write files. Tracebacks point at the page and line: each
block is compiled with the markdown file as its file name and its own line numbers.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import torch.distributed as dist

import jepa_rate

DOCS = Path(__file__).resolve().parent.parent / "docs"
SKIP_DIRS = {"_build", "generated"}
# Info strings that would be highlighted as Python but not run: refuse them, so no sample escapes the test.
PYTHON_ALIASES = {"py", "python3", "pycon", "ipython", "{code-block}", "{code}", "{code-cell}"}
SUBPACKAGES = ("losses", "modules", "models", "metrics", "schedules")
NUMERICS = (
    "jepa_rate.numerics.gram_logdet",
    "jepa_rate.numerics.distributed",
    "jepa_rate.numerics.precision",
)
# The pages the site must have (relative to docs/, without the suffix).
REQUIRED_PAGES = (
    "index",
    "getting_started",
    "concepts/coding_rate",
    "concepts/conventions",
    "concepts/seq_jepa",
    "howto/choose_eps",
    "howto/mixed_precision",
    "howto/compile",
    "howto/multi_gpu",
    "howto/own_encoder",
    "howto/resume",
    "howto/collapse_diagnostics",
    "trainer",
    "two_view",
    "api/index",
    "benchmarks",
    "results",
    "changelog",
)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a markdown page."""

    info: str
    code: str
    line: int  # 1-based line of the first code line in the page


def fenced_blocks(text: str) -> list[CodeBlock]:
    """Fenced code blocks of a MyST page, outermost only (a fence inside a block is content)."""
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if (
                close is not None
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed fence {fence!r} opened at line {i + 1}")
        blocks.append(CodeBlock(info=info, code="\n".join(body) + "\n", line=i + 2))
        i = j + 1
    return blocks


def doc_pages() -> list[Path]:
    """Markdown pages of the site, without build outputs and generated API stubs."""
    return sorted(p for p in DOCS.rglob("*.md") if not SKIP_DIRS.intersection(p.relative_to(DOCS).parts[:-1]))


def python_blocks(page: Path) -> list[CodeBlock]:
    return [b for b in fenced_blocks(page.read_text(encoding="utf-8")) if b.info.split()[:1] == ["python"]]


# The README's usage sample is part of the documentation a user meets first, so it runs too.
PAGES_WITH_CODE = [p for p in [*doc_pages(), DOCS.parent / "README.md"] if python_blocks(p)]


def page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix() if page.is_relative_to(DOCS) else page.name


# Pages whose samples take more than a few seconds (torch.compile with inductor builds C++ kernels).
SLOW_PAGES = {"howto/compile.md"}


def test_fence_parser_finds_blocks_and_keeps_nested_fences() -> None:
    text = (
        "intro\n\n````markdown\n```python\nnot run\n```\n````\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
    )
    blocks = fenced_blocks(text)
    assert [b.info for b in blocks] == ["markdown", "python", "bash"]
    assert blocks[1].code == "x = 1\n" and blocks[1].line == 10
    assert "not run" in blocks[0].code
    with pytest.raises(ValueError, match="unclosed"):
        fenced_blocks("```python\nx = 1\n")


@pytest.mark.parametrize("page", REQUIRED_PAGES)
def test_required_page_exists_and_has_content(page: str) -> None:
    path = DOCS / f"{page}.md"
    assert path.is_file(), f"docs/{page}.md is missing"
    words = path.read_text(encoding="utf-8").split()
    assert len(words) >= 20, f"docs/{page}.md has only {len(words)} words"


def test_code_samples_are_runnable_python_or_shell() -> None:
    # A sample tagged `py` or `{code-block} python` would render as Python but never run here.
    offenders = [
        f"{page.relative_to(DOCS)}:{block.line - 1}: ```{block.info}"
        for page in doc_pages()
        for block in fenced_blocks(page.read_text(encoding="utf-8"))
        if block.info.split()[:1] and block.info.split()[0] in PYTHON_ALIASES
    ]
    hint = "tag Python samples as ```python so that they are executed:\n"
    assert not offenders, hint + "\n".join(offenders)
    assert PAGES_WITH_CODE, "no ```python block found under docs/"


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if page_id(p) in SLOW_PAGES else p for p in PAGES_WITH_CODE],
    ids=page_id,
)
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    # The samples use tiny tensors, for which a second intra-op thread only adds synchronization: on a busy
    # machine it can make them orders of magnitude slower. One thread keeps the test fast and predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in python_blocks(page):
            # Leading newlines make traceback line numbers those of the markdown file.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(page), "exec"), namespace)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_float32_matmul_precision("highest")
        torch.set_num_threads(threads)


def _autosummary_entries(text: str) -> set[str]:
    """Fully qualified names listed by the ``autosummary`` directives of an API page."""
    names: set[str] = set()
    module = ""
    in_summary = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(".. currentmodule::") or line.startswith(".. automodule::"):
            module = line.split("::", 1)[1].strip()
            in_summary = False
        elif line.startswith(".. autosummary::"):
            in_summary = True
        elif in_summary and raw.startswith("   ") and line and not line.startswith(":"):
            name = line.lstrip("~")
            names.add(name if "." in name and name.startswith("jepa_rate") else f"{module}.{name}")
        elif in_summary and line and not raw.startswith(" "):
            in_summary = False
    return names


def _documented() -> tuple[set[str], set[str]]:
    entries: set[str] = set()
    modules: set[str] = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        entries |= _autosummary_entries(text)
        modules |= set(re.findall(r"^\.\. automodule:: (\S+)", text, flags=re.MULTILINE))
    return entries, modules


def test_autosummary_entries_resolve() -> None:
    entries, _ = _documented()
    assert entries, "no autosummary entry found in docs/api/"
    for name in entries:
        module_name, _, attr = name.rpartition(".")
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), f"{name} is listed in docs/api/ but does not exist"


def test_api_pages_list_every_public_name() -> None:
    entries, modules = _documented()
    missing: list[str] = []
    for name in jepa_rate.__all__:
        if name == "__version__":
            continue
        obj = getattr(jepa_rate, name)
        if isinstance(obj, type(jepa_rate)):
            if obj.__name__ not in modules:
                missing.append(f"jepa_rate.{name} (module)")
            continue
        homes = [f"jepa_rate.{sub}.{name}" for sub in SUBPACKAGES]
        if not any(
            home in entries and getattr(importlib.import_module(home.rpartition(".")[0]), name) is obj
            for home in homes
        ):
            missing.append(f"jepa_rate.{name}")
    for module_name in (*(f"jepa_rate.{sub}" for sub in SUBPACKAGES), *NUMERICS):
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{n}" for n in module.__all__ if f"{module_name}.{n}" not in entries]
        if module_name not in modules:
            missing.append(f"{module_name} (module)")
    assert not missing, "add these names to an autosummary list in docs/api/:\n" + "\n".join(missing)


def test_results_page_includes_the_results_table() -> None:
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert "results_table.md" in text


# Link relations that make a browser load the target while it shows the page (not navigation links).
_LOADED_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "apple-touch-icon", "manifest"}


class _LoadedResources(HTMLParser):
    """Collects the addresses a page loads when it is shown: scripts, stylesheets, preloads, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        rels = set((attr.get("rel") or "").split())
        if tag in {"script", "img", "iframe", "source", "embed"} and attr.get("src"):
            self.urls.append(str(attr["src"]))
        elif tag == "link" and attr.get("href") and rels & _LOADED_RELS:
            self.urls.append(str(attr["href"]))


def loaded_resources(html: str) -> list[str]:
    parser = _LoadedResources()
    parser.feed(html)
    return parser.urls


def is_remote(url: str) -> bool:
    """True for an address outside the site: one with a host (``https://...``, ``//...``) or a scheme
    other than ``data:``."""
    parts = urlsplit(url)
    return bool(parts.netloc) or parts.scheme not in {"", "data"}


def test_loaded_resources_finds_remote_scripts_and_stylesheets() -> None:
    page = (
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
        '<script>inline()</script><script src="_static/doctools.js?v=1"></script>'
        '<link rel="stylesheet" href="//fonts.example.org/css"><link rel="next" href="https://example.org/">'
        '<link rel="preload" as="script" href="_static/a.js"><img src="data:image/png;base64,AAAA">'
    )
    urls = loaded_resources(page)
    assert urls == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
        "_static/doctools.js?v=1",
        "//fonts.example.org/css",
        "_static/a.js",
        "data:image/png;base64,AAAA",
    ]
    assert [is_remote(u) for u in urls] == [True, False, True, False, False]
    assert is_remote("http://localhost/x.js") and is_remote("file:///tmp/x.js")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built once for this module (about 20 s on two cores)."""
    out = tmp_path_factory.mktemp("site")
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-q",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(DOCS),
        str(out / "html"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("JEPA_RATE_DOCS_INTERSPHINX", None)  # intersphinx would need the network
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out / "html"


def _built_pages(site: Path) -> list[Path]:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > len(REQUIRED_PAGES), f"the build wrote only {len(pages)} pages"
    return pages


def test_built_site_loads_nothing_from_a_remote_address(built_site: Path) -> None:
    offenders: list[str] = []
    for page in _built_pages(built_site):
        for url in loaded_resources(page.read_text(encoding="utf-8")):
            name = page.relative_to(built_site).as_posix()
            if is_remote(url):
                offenders.append(f"{name}: loads {url}")
            elif url.startswith("data:"):
                continue
            elif not (page.parent / urlsplit(url).path).is_file():
                offenders.append(f"{name}: loads {url}, which is not in the built site")
    assert not offenders, "the site must work offline:\n" + "\n".join(offenders[:20])


def test_math_pages_load_mathjax_from_the_built_site(built_site: Path) -> None:
    math_pages = [p for p in _built_pages(built_site) if 'class="math' in p.read_text(encoding="utf-8")]
    names = {p.relative_to(built_site).as_posix() for p in math_pages}
    assert {"index.html", "concepts/coding_rate.html"} <= names, sorted(names)
    for page in math_pages:
        scripts = [u for u in loaded_resources(page.read_text(encoding="utf-8")) if "mathjax" in u.lower()]
        assert scripts, f"{page.name} has formulas but loads no MathJax"
        for url in scripts:
            assert not is_remote(url), f"{page.name} loads MathJax from {url}"
            script = (page.parent / urlsplit(url).path).resolve()
            assert script.is_file() and script.stat().st_size > 100_000, f"{url} is missing or truncated"
    # MathJax's CommonHTML output draws with its own web fonts, loaded relative to the script.
    fonts = built_site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("*.woff"))) >= 20, f"MathJax fonts missing under {fonts}"


def test_built_pages_scroll_wide_content_and_copy_code(built_site: Path) -> None:
    results = (built_site / "results.html").read_text(encoding="utf-8")
    assert results.count("<table") >= 2
    for page in ("results.html", "concepts/coding_rate.html"):
        urls = loaded_resources((built_site / page).read_text(encoding="utf-8"))
        assert any(urlsplit(u).path.endswith("_static/custom.css") for u in urls), page
        assert any(urlsplit(u).path.endswith("copybutton.js") for u in urls), page
    css = (built_site / "_static" / "custom.css").read_text(encoding="utf-8")
    assert re.search(r"table[^{]*\{[^}]*overflow-x:\s*auto", css), "wide tables must scroll"
