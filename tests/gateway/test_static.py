"""The web assets' map: which URL paths name which files, and what each answer carries."""

from __future__ import annotations

import hashlib

from wsgate.gateway.static import PAGE_POLICY, WebAssets


def make_tree(root):
    (root / "demo" / "vendor").mkdir(parents=True)
    (root / "wsgate.js").write_text("export const x = 1;\n")
    (root / "wsgate.d.ts").write_text("export declare const x: number;\n")
    (root / "tsgen_notes.py").write_text("not served\n")
    (root / "demo" / "index.html").write_text("<!doctype html><title>demo</title>\n")
    (root / "demo" / "demo.js").write_text("import './vendor/lib.js';\n")
    (root / "demo" / "vendor" / "lib.js").write_text("export {};\n")
    (root / "demo" / "notes.unknown").write_text("no content type: not served\n")
    return root


def test_library_modules_and_declarations_are_served_under_v1(tmp_path):
    web = WebAssets(make_tree(tmp_path))
    js = web.find("/v1/wsgate.js")
    assert js is not None
    assert js.body == b"export const x = 1;\n"
    assert js.content_type == "text/javascript; charset=utf-8"
    ts = web.find("/v1/wsgate.d.ts")
    assert ts is not None
    assert ts.content_type == "application/typescript; charset=utf-8"
    assert web.find("/v1/tsgen_notes.py") is None


def test_the_demo_page_is_served_at_the_root_and_its_files_under_demo(tmp_path):
    web = WebAssets(make_tree(tmp_path))
    index = web.find("/")
    assert index is not None
    assert index is web.find("/demo/index.html")
    assert index.headers()["Content-Security-Policy"] == PAGE_POLICY
    vendor = web.find("/demo/vendor/lib.js")
    assert vendor is not None
    assert "Content-Security-Policy" not in vendor.headers()
    assert web.find("/demo/notes.unknown") is None


def test_with_the_demo_off_only_the_library_is_served(tmp_path):
    web = WebAssets(make_tree(tmp_path), demo=False)
    assert web.find("/") is None
    assert web.find("/demo/demo.js") is None
    assert web.find("/v1/wsgate.js") is not None


def test_paths_outside_the_map_are_not_found_whatever_they_spell(tmp_path):
    (tmp_path / "secret.txt").write_text("outside")
    web = WebAssets(make_tree(tmp_path / "web"))
    for path in [
        "/demo/../secret.txt",
        "/demo/%2e%2e/secret.txt",
        "/v1/../secret.txt",
        "/demo//index.html",
        "/demo/index.html/",
        "/v1/",
        "/demo/",
    ]:
        assert web.find(path) is None, path


def test_every_answer_is_revalidated_by_a_strong_etag_of_its_bytes(tmp_path):
    web = WebAssets(make_tree(tmp_path))
    js = web.find("/v1/wsgate.js")
    assert js is not None
    headers = js.headers()
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    digest = hashlib.sha256(js.body).hexdigest()[:32]
    assert headers["ETag"] == f'"{digest}"'


def test_a_missing_web_folder_serves_nothing(tmp_path):
    assert WebAssets(tmp_path / "absent").assets == {}


def test_if_none_match_is_read_as_a_list_of_weakly_compared_tags(tmp_path):
    js = WebAssets(make_tree(tmp_path)).find("/v1/wsgate.js")
    assert js is not None
    for header in [js.etag, f'"a", {js.etag}', f'"a",{js.etag}', f"W/{js.etag}", "*", " * "]:
        assert js.fresh(header), header
    for header in [None, "", '"a"', js.etag.strip('"'), f'"{js.etag}"']:
        assert not js.fresh(header), header
