"""The dashboard's files: served at / and /static without a key, nothing else reachable."""

import re

from fastapi.testclient import TestClient


def test_page_needs_no_key_and_every_module_it_imports_is_served(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert 'id="api-key"' in page.text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    assert api.get("/static/style.css").headers["content-type"].startswith("text/css")
    # app.js is an ES module: follow its imports, as the browser does, until none is new.
    pending, served = ["app.js"], set()
    while pending:
        name = pending.pop()
        response = api.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        served.add(name)
        imported = re.findall(r'from "\./([a-z-]+\.js)";', response.text)
        pending += [m for m in imported if m not in served]
    assert {"app.js", "lib.js", "chart.js", "job.js", "playground.js"} <= served


def test_script_sends_the_key_as_bearer(api: TestClient) -> None:
    script = api.get("/static/lib.js").text
    assert "Authorization: `Bearer ${apiKey()}`" in script
    assert "localStorage" in script


def test_only_the_dashboard_files_are_served(api: TestClient) -> None:
    for name in ("dashboard.py", "index.htm"):
        response = api.get(f"/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["message"].startswith(f"No such dashboard file: {name}")
    escape = api.get("/static/..%2Froutes%2Fdashboard.py")
    assert escape.status_code == 404 and "import" not in escape.text
    assert "/" not in api.get("/openapi.json").json()["paths"]
