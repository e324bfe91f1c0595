"""The web UI's router: pages without a key (the API still needs one), the strict CSP, only the
static folder's files, ``server.ui = false``, and static checks of the page's code (no inline
script or style, every module import resolves, nothing inserted as HTML)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from lollms_server.api.ui import CONTENT_SECURITY_POLICY, STATIC_FOLDER
from tests.conftest import GOOD_KEY

SCRIPTS = sorted(STATIC_FOLDER.glob("*.js"))


async def test_the_pages_load_without_a_key_with_a_strict_policy(app_client: Any) -> None:
    async with app_client() as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/app.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert policy == CONTENT_SECURITY_POLICY
        directives = dict(item.strip().split(" ", 1) for item in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
        assert directives["style-src"] == "'self'" and directives["object-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await client.get("/ui/app.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert (await client.get("/ui/style.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/favicon.ico")).headers["content-type"] == "image/svg+xml"
        # the API the page calls still needs the key
        assert (await client.get("/api/v1/list_bindings")).status_code == 401
        listed = await client.get("/api/v1/list_bindings", headers={"X-API-Key": GOOD_KEY})
        assert listed.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/missing.js",
        "/ui/.hidden.js",
        "/ui/app.py",
        "/ui/..%2F..%2Fmain.py",
        "/ui/%2e%2e",
        "/ui/../api/v1/status",
        "/ui/",
        "/ui/sub/app.js",
    ],
)
async def test_only_the_static_files_are_served(app_client: Any, path: str) -> None:
    async with app_client() as client:
        response = await client.get(path)
        assert response.status_code in (401, 404), (path, response.status_code)
        assert "import" not in response.text  # no source came back
        if response.status_code == 404:
            assert response.json()["error"]["type"] in ("not_found_error", "not_found")


async def test_ui_false_turns_the_pages_off(app_client: Any) -> None:
    async with app_client(server={"auto_install_requirements": False, "ui": False}) as client:
        assert (await client.get("/")).status_code == 401  # no longer public
        assert (await client.get("/ui/app.js")).status_code == 401
        assert (await client.get("/", headers={"X-API-Key": GOOD_KEY})).status_code == 404
        assert (await client.get("/ui/app.js", headers={"X-API-Key": GOOD_KEY})).status_code == 404


def test_the_page_has_no_inline_script_or_style_and_its_files_exist() -> None:
    html = (STATIC_FOLDER / "index.html").read_text()
    for script in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in script, script
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None, "inline script"
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None, "inline event handler"
    assert "http://" not in html and "https://" not in html, "everything is served from here"
    for reference in re.findall(r'(?:src|href)="(/ui/[^"]+)"', html):
        assert (STATIC_FOLDER / reference.removeprefix("/ui/")).is_file(), reference


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_modules_import_only_each_other_and_never_insert_html(script: Any) -> None:
    source = script.read_text()
    for target in re.findall(r'from\s+"([^"]+)"', source):
        assert target.startswith("./") and (STATIC_FOLDER / target[2:]).is_file(), target
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, f"{script.name} uses {sink}"
    assert "localStorage" not in source and "document.cookie" not in source, "the key stays in sessionStorage"


def test_every_element_id_the_scripts_use_is_in_the_page() -> None:
    html = (STATIC_FOLDER / "index.html").read_text()
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    used = {name for script in SCRIPTS for name in re.findall(r'\$\("([^"]+)"\)', script.read_text())}
    assert used and used <= ids, sorted(used - ids)
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    controls = set(re.findall(r'<(?:input|select|textarea)\b[^>]*\bid="([^"]+)"', html))
    assert controls <= labelled, sorted(controls - labelled)
