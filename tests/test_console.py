"""The web console through Starlette's test client: pages, filters, actions, guards.

Runs are real: made by the real Worker in a SQLite store (``console_flows.seed``).
The same pages in a real Chromium are tested in ``test_console_browser.py``.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from console_flows import XSS, seed, shop
from starlette.testclient import TestClient

import stepflow
from stepflow.cli import main
from stepflow.codec import loads_batch
from stepflow.console import _views, create_app
from stepflow.errors import ConfigurationError
from stepflow.stores import MemoryStore, SQLiteStore, Store

BASE = "http://127.0.0.1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = SQLiteStore(tmp_path / "runs.db")
    yield opened
    opened.close()


@pytest.fixture
def runs(store: Store) -> dict[str, str]:
    return seed(store)


def client(store: Store, **kw: Any) -> TestClient:
    return TestClient(create_app(store, [shop], **kw), base_url=BASE, follow_redirects=False)


def _run_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-run="([^"]*)">', html)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrftoken" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


# -- the runs page ---------------------------------------------------------------------


def test_the_runs_page_lists_runs_newest_first_with_counts_by_status(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        page = web.get("/runs")
    assert page.status_code == 200
    assert _run_ids(page.text) == ["other-1", "wait-1", "fail-1", "done-2", "done-1"]
    counts = dict(re.findall(r'data-status="(\w+)">\w+<span class="n">(\d+)</span>', page.text))
    assert counts == {
        "all": "5",
        "running": "2",
        "cancelling": "0",
        "failed": "1",
        "completed": "2",
        "cancelled": "0",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["fail-1"]),
        ("status=running", ["other-1", "wait-1"]),
        ("flow=shop/v1", ["wait-1", "fail-1", "done-2", "done-1"]),
        ("flow=other/v1", ["other-1"]),
        ("prefix=done", ["done-2", "done-1"]),
        ("prefix=done&status=completed&flow=shop/v1", ["done-2", "done-1"]),
        ("prefix=zzz", []),
        ("status=bogus", ["other-1", "wait-1", "fail-1", "done-2", "done-1"]),
    ],
)
def test_the_runs_page_filters_by_flow_status_and_id_prefix(
    store: Store, runs: dict[str, str], query: str, expected: list[str]
) -> None:
    with client(store) as web:
        page = web.get(f"/runs?{query}")
    assert page.status_code == 200
    assert _run_ids(page.text) == expected
    if not expected:
        assert "No runs match." in page.text


def test_the_counts_follow_the_flow_and_prefix_filters(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        page = web.get("/runs?prefix=done&status=failed")
    assert _run_ids(page.text) == []
    assert re.search(r'data-status="completed">completed<span class="n">2</span>', page.text)
    assert re.search(r'data-status="all">all<span class="n">2</span>', page.text)


def test_pages_walk_all_runs_older_and_back_newer_without_repeats() -> None:
    store = MemoryStore()
    for i in range(123):
        store.create_run(
            f"r{i:03d}", "shop/v1", "{}", input=None, status="completed", wake_at=None, now=i
        )
    seen: list[str] = []
    url = "/runs"
    with client(store) as web:
        while True:
            page = web.get(url)
            seen.extend(_run_ids(page.text))
            older = re.search(r'id="page-older" href="([^"]+)"', page.text)
            if older is None:
                break
            url = older.group(1).replace("&amp;", "&")
        assert seen == [f"r{i:03d}" for i in range(122, -1, -1)]
        assert len(_run_ids(page.text)) == 23
        newer = re.search(r'id="page-newer" href="([^"]+)"', page.text)
        assert newer is not None
        back = web.get(newer.group(1).replace("&amp;", "&"))
    assert _run_ids(back.text) == [f"r{i:03d}" for i in range(72, 22, -1)]


def test_the_live_fragment_is_the_runs_table_alone(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        full = web.get("/runs?status=completed")
        fragment = web.get("/runs?status=completed&partial=1")
    assert 'data-src="/runs?status=completed&amp;partial=1"' in full.text
    assert "<html" not in fragment.text
    assert "<table" in fragment.text
    assert _run_ids(fragment.text) == ["done-2", "done-1"]


def test_a_bad_cursor_is_the_first_page(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        page = web.get("/runs?older=garbage&newer=1.5")
    assert page.status_code == 200
    assert _views.parse_cursor("garbage") is None
    assert _views.parse_cursor("x:y") is None
    assert _views.parse_cursor("1.5:a:b") == (1.5, "a:b")


# -- the run page -------------------------------------------------------------------------


def test_a_failed_run_shows_its_diagram_position_timeline_and_error(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        page = web.get("/runs/fail-1")
    assert page.status_code == 200
    text = page.text
    assert 'id="position"><code>againRetry/flaky</code>' in text
    assert "<svg" in text
    assert 'id="timeline"' in text
    # Graphviz fills the failed position red (stepflow.diagrams' colours).
    assert 'fill="#fecaca"' in text
    rows = re.findall(
        r"<tr><td>(\w+) <b>([^<]+)</b>.*?<td>([^<]*)</td><td><span class=\"(\w+)\"", text
    )
    assert [(kind, step, attempt, outcome) for kind, step, attempt, outcome in rows] == [
        ("do", "fetch", "-", "returned"),
        ("do", "againRetry/flaky", "1", "raised"),
        ("do", "againRetry/flaky", "2", "raised"),
    ]
    assert "RuntimeError: boom &lt;b&gt;not bold&lt;/b&gt;" in text
    assert 'id="action-resume"' in text
    assert 'id="action-cancel"' in text


def test_a_running_run_highlights_where_it_waits(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        page = web.get("/runs/wait-1")
    assert 'fill="#fde68a"' in page.text  # the amber of the current position
    assert 'data-outcome="in flight"' in page.text
    assert 'data-final="false"' in page.text
    assert 'id="action-cancel"' in page.text
    assert 'id="action-resume"' not in page.text


def test_a_completed_run_shows_its_outputs_and_no_actions(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        page = web.get("/runs/done-1")
    assert 'id="position"><code>completed</code>' in page.text
    assert 'id="outputs"' in page.text
    assert "finish" in page.text
    assert 'id="action-cancel"' not in page.text
    assert page.text.count('<rect class="returned"') == 4  # fetch, flaky, ready, finish
    assert 'data-final="true"' in page.text


def test_without_graphviz_the_diagram_is_drawn_as_html(
    store: Store, runs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_views.shutil, "which", lambda name: None)
    with client(store) as web:
        page = web.get("/runs/fail-1")
    assert "<svg" not in page.text.split('id="diagram"')[1].split("</div>")[0]
    current = re.findall(
        r'class="node do current failed" data-current="true">\s*do <b>([^<]+)</b>', page.text
    )
    assert current == ["againRetry/flaky"]
    order = re.findall(
        r'class="node (?:\w+)[^"]*" data-current="\w+">\s*\w+ <b>([^<]+)</b>', page.text
    )
    assert order == ["fetch", "againRetry/flaky", "ready", "finish"]  # the definition's order
    assert "drawn without Graphviz" in page.text


def test_a_run_of_a_flow_not_served_is_shown_without_a_diagram(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        page = web.get("/runs/other-1")
    assert page.status_code == 200
    assert "does not serve flow &#39;other/v1&#39;" in page.text
    assert 'id="position"><code>only</code>' in page.text


def test_an_unknown_run_is_a_404_page(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        page = web.get("/runs/<nope>")
    assert page.status_code == 404
    assert "no run with id &#39;&lt;nope&gt;&#39;" in page.text


def test_run_ids_with_slashes_and_markup_are_linked_and_escaped() -> None:
    store = MemoryStore()
    weird = 'a/b?c#"<script>x</script>'
    stepflow.start_run(store, shop, {"app": "x"}, run_id=weird)
    with client(store) as web:
        listing = web.get("/runs")
        assert "<script>x</script>" not in listing.text
        link = re.search(r'<td class="id"><a href="([^"]+)">', listing.text)
        assert link is not None
        assert link.group(1) == "/runs/a%2Fb%3Fc%23%22%3Cscript%3Ex%3C%2Fscript%3E"
        page = web.get(link.group(1))
    assert page.status_code == 200
    assert "&lt;script&gt;x&lt;/script&gt;" in page.text


# -- escaping and headers ---------------------------------------------------------------


def test_user_data_is_escaped_everywhere_and_only_the_nonce_script_runs(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        pages = [web.get(url) for url in ("/runs", "/runs/done-1", "/runs/done-2", "/flows")]
    run_page = pages[1]
    assert XSS not in run_page.text
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in run_page.text
    assert "<i>ledger</i>" not in pages[2].text
    assert "&lt;i&gt;ledger&lt;/i&gt;" in pages[2].text
    for page in pages:
        policy = page.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", policy)
        assert nonce is not None
        assert "unsafe-inline" not in policy.split("style-src")[0]
        scripts = re.findall(r"<script([^>]*)>", page.text)
        assert all(attrs == f' nonce="{nonce.group(1)}"' for attrs in scripts), scripts
        assert page.headers["x-content-type-options"] == "nosniff"


# -- actions ---------------------------------------------------------------------------


def test_cancel_with_the_csrf_token_sends_the_run_a_cancellation(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        token = _csrf(web.get("/runs/wait-1").text)
        form = {"run_id": "wait-1", "csrftoken": token, "reason": "by hand"}
        done = web.post("/actions/cancel", data=form)
        assert done.status_code == 303
        assert done.headers["location"] == "/runs/wait-1?done=cancelling"
        assert "Cancellation sent" in web.get(done.headers["location"]).text
    (pending,) = store.pending_events("wait-1", limit=5)
    assert (pending.name, pending.payload) == ("stepflow:cancel", "by hand")
    # A worker delivers it: the run ends cancelled, the reason on its pages.
    stepflow.Worker(store, [shop]).run_sync(until_idle=True, handle_signals=False)
    assert store.load("wait-1").status == "cancelled"
    with client(store) as web:
        assert "by hand" in web.get("/runs?status=cancelled").text
        assert "stepflow.errors.RunCancelled: by hand" in web.get("/runs/wait-1").text


def test_cancel_abandons_a_failed_run_at_once(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        token = _csrf(web.get("/runs/fail-1").text)
        done = web.post("/actions/cancel", data={"run_id": "fail-1", "csrftoken": token})
        assert done.headers["location"] == "/runs/fail-1?done=cancelled"
        assert "Run cancelled." in web.get(done.headers["location"]).text
    assert store.load("fail-1").status == "cancelled"
    assert [loads_batch(e.batch).op for e in store.history("fail-1")][-1] == "cancel"


def test_resume_with_the_csrf_token_resumes_a_failed_run(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        token = _csrf(web.get("/runs/fail-1").text)
        done = web.post("/actions/resume", data={"run_id": "fail-1", "csrftoken": token})
    assert done.headers["location"] == "/runs/fail-1?done=resumed"
    assert store.load("fail-1").status == "running"


def test_an_action_without_the_csrf_token_is_refused(store: Store, runs: dict[str, str]) -> None:
    with client(store) as web:
        web.get("/runs/wait-1")  # the CSRF cookie is set
        refused = web.post("/actions/cancel", data={"run_id": "wait-1"})
        forged = web.post("/actions/cancel", data={"run_id": "wait-1", "csrftoken": "forged"})
    with client(store) as fresh:  # no cookie at all
        cookieless = fresh.post("/actions/cancel", data={"run_id": "wait-1", "csrftoken": "x"})
    assert (refused.status_code, forged.status_code, cookieless.status_code) == (403, 403, 403)
    assert store.load("wait-1").status == "running"


def test_a_read_only_console_refuses_actions(store: Store, runs: dict[str, str]) -> None:
    with client(store, read_only=True) as web:
        page = web.get("/runs/wait-1")
        assert 'id="action-cancel"' not in page.text
        assert "read-only" in page.text
        token = re.search(r"stepflow_csrf=([^;]+)", page.headers["set-cookie"])
        assert token is not None
        refused = web.post(
            "/actions/cancel", data={"run_id": "wait-1", "csrftoken": token.group(1)}
        )
    assert refused.status_code == 403
    assert "--read-only" in refused.text
    assert store.load("wait-1").status == "running"


def test_an_action_the_run_refuses_is_reported_on_its_page(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        token = _csrf(web.get("/runs/fail-1").text)
        done = web.post("/actions/cancel", data={"run_id": "done-1", "csrftoken": token})
        assert done.status_code == 303
        page = web.get(done.headers["location"])
        unknown = web.post("/actions/cancel", data={"run_id": "nope", "csrftoken": token})
        other = web.post("/actions/resume", data={"run_id": "other-1", "csrftoken": token})
        other_page = web.get(other.headers["location"])
    assert "already completed; nothing to cancel" in page.text
    assert unknown.status_code == 404
    assert "which this console does not serve" in other_page.text


# -- the token --------------------------------------------------------------------------


def test_with_a_token_every_request_must_carry_it(store: Store, runs: dict[str, str]) -> None:
    with client(store, token="s3cret") as web:
        assert web.get("/runs").status_code == 401
        assert web.get("/runs", headers={"x-stepflow-token": "wrong"}).status_code == 401
        assert web.get("/runs", headers={"x-stepflow-token": "s3cret"}).status_code == 200
        assert web.get("/runs", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert web.post("/actions/cancel", data={"run_id": "wait-1"}).status_code == 401
        assert web.get("/runs?token=wrong").status_code == 401
        login = web.get("/runs/wait-1?token=s3cret&x=1")
        assert login.status_code == 303
        assert login.headers["location"] == "/runs/wait-1?x=1"
        assert "HttpOnly" in login.headers["set-cookie"]
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        page = web.get("/runs/wait-1")  # the cookie now logs in
        assert page.status_code == 200
        token = _csrf(page.text)
        assert (
            web.post("/actions/cancel", data={"run_id": "wait-1", "csrftoken": token}).status_code
            == 303
        )
    assert [e.name for e in store.pending_events("wait-1", limit=5)] == ["stepflow:cancel"]


def test_without_a_token_only_loopback_host_names_are_answered(
    store: Store, runs: dict[str, str]
) -> None:
    app = create_app(store, [shop], allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as web:
        assert web.get("/runs").status_code == 200
        assert web.get("/runs", headers={"host": "evil.example:8000"}).status_code == 400


# -- the command ------------------------------------------------------------------------


def test_ui_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "runs.db").close()
    result = CliRunner().invoke(
        main, ["ui", "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--host", "0.0.0.0"], env={}
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "pass --token TOKEN (or set STEPFLOW_UI_TOKEN), or bind 127.0.0.1" in result.output


def test_ui_without_the_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "starlette" else real(name, *a),
    )
    result = CliRunner().invoke(main, ["ui", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2
    assert result.output == (
        "Error: the web console needs the 'ui' extra (missing: starlette): "
        "pip install 'stepflow[ui]'\n"
    )
    with pytest.raises(ConfigurationError, match=r"pip install 'stepflow\[ui\]'"):
        create_app(MemoryStore(), [])


def test_create_app_refuses_two_flows_of_one_name() -> None:
    with pytest.raises(ConfigurationError, match="two flows named 'shop/v1'"):
        create_app(MemoryStore(), [shop, shop])


# -- the flows page ---------------------------------------------------------------------


def test_the_flows_page_shows_each_flow_with_runs_by_status_and_fingerprints(
    store: Store, runs: dict[str, str]
) -> None:
    with client(store) as web:
        page = web.get("/flows")
    assert page.status_code == 200
    section = page.text.split('data-flow="shop/v1"')[1]
    counts = dict(re.findall(r'data-status="(\w+)">\w+<span class="n">(\d+)</span>', section))
    assert counts == {
        "running": "1",
        "cancelling": "0",
        "failed": "1",
        "completed": "2",
        "cancelled": "0",
    }
    assert f'<td class="id">{shop.definition.fingerprint}</td><td>4</td><td>served' in section
    assert "<svg" in section


# -- the timeline -----------------------------------------------------------------------


def test_the_timeline_shows_waits_before_polls_and_timers() -> None:
    polls = {"n": 0}

    def ready(ctx: Any) -> bool:
        polls["n"] += 1
        return polls["n"] >= 3

    flow = stepflow.new(
        stepflow.named("nap/v1")
        .do("first", lambda ctx: 1)
        .sleep("nap", 0.05)
        .wait_for("ready", ready, every=0.04)
    )
    store = MemoryStore()
    stepflow.start_run(store, flow, None, run_id="n1")
    stepflow.Worker(store, [flow]).run_sync(until_idle=True, handle_signals=False)
    page = _views.run_page(store, {flow.name: flow}, "n1")
    spans = page.timeline.spans
    assert [(s.kind, s.step, s.outcome) for s in spans] == [
        ("do", "first", "returned"),
        ("sleep", "nap", "timer"),
        ("wait_for", "ready", "returned"),
        ("wait_for", "ready", "returned"),
        ("wait_for", "ready", "returned"),
    ]
    nap = spans[1]
    assert nap.due_at - nap.issued_at == pytest.approx(0.05, abs=0.005)
    assert nap.ended_at is not None
    assert nap.ended_at >= nap.due_at
    # Each poll after the first waited its interval after the previous answer.
    for before, poll in itertools.pairwise(spans[2:]):
        assert poll.due_at - poll.issued_at == pytest.approx(0.04, abs=0.005)
        assert poll.issued_at >= (before.ended_at or 0)
    assert [bar.row for bar in page.timeline.bars] == [0, 1, 2, 3, 4]
    assert all(0 <= bar.run_x <= 100 and bar.run_w > 0 for bar in page.timeline.bars)
    assert page.timeline.replayed


# -- the command, end to end ---------------------------------------------------------------


def test_the_cli_does_not_import_the_web_stack() -> None:
    web = ("starlette", "jinja2", "uvicorn", "asgi_csrf")
    code = f"import sys, stepflow.cli; print([m for m in {web!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_stepflow_ui_serves_the_console_on_loopback(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    with closing(SQLiteStore(db)) as opened:
        seed(opened)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "stepflow.cli", "ui", "console_flows:shop"),
            *("--db", f"sqlite:///{db}", "--port", str(port)),
        ],
        cwd=Path(__file__).parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "STEPFLOW_UI_TOKEN": ""},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as page:
                    html = page.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.1)
        assert _run_ids(html) == ["other-1", "wait-1", "fail-1", "done-2", "done-1"]
        rebound = urllib.request.Request(
            f"http://127.0.0.1:{port}/runs", headers={"Host": "attacker.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=5)
        refused.value.close()
        assert refused.value.code == 400
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"stepflow console at http://127.0.0.1:{port}/" in output


def test_a_journal_entry_that_cannot_be_read_is_reported_not_raised(
    store: Store, runs: dict[str, str], tmp_path: Path
) -> None:
    import sqlite3

    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("UPDATE journal SET batch = 'not json' WHERE run_id = 'done-1' AND seq = 2")
    with client(store) as web:
        page = web.get("/runs/done-1")
        listing = web.get("/runs")
    assert page.status_code == 500
    assert "Cannot read this run" in page.text
    assert "&#39;done-1&#39;" in page.text
    assert listing.status_code == 200  # the other runs are still listed
    assert "done-1" in _run_ids(listing.text)


def test_a_run_row_that_cannot_be_read_is_reported_not_raised(
    store: Store, runs: dict[str, str], tmp_path: Path
) -> None:
    import sqlite3

    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("UPDATE runs SET input = '{broken' WHERE run_id = 'done-1'")
    with client(store) as web:
        listing = web.get("/runs")
        page = web.get("/runs/done-1")
        other = web.get("/runs/done-2")
    # The store reads the rest of the row: the run is listed; its page says what is wrong.
    assert listing.status_code == 200
    assert "done-1" in listing.text
    assert page.status_code == 500
    assert "input is not valid JSON" in page.text
    assert other.status_code == 200


def test_the_run_page_shows_the_progress_a_handler_reported(
    store: Store, runs: dict[str, str]
) -> None:
    store.report_progress("wait-1", {"copied_gb": 3, "of_gb": 10}, now=time.time())
    with client(store) as web:
        page = web.get("/runs/wait-1")
    assert page.status_code == 200
    progress = re.search(r'<pre id="progress">(.*?)</pre>', page.text, re.S)
    assert progress is not None
    assert "copied_gb" in progress.group(1)
    assert "10" in progress.group(1)


def test_the_run_page_of_a_pruned_run_says_its_history_is_gone(
    store: Store, runs: dict[str, str]
) -> None:
    result = store.prune(time.time() + 1, now=time.time())
    assert result.runs >= 1
    with client(store) as web:
        page = web.get("/runs/done-1")
    assert page.status_code == 200
    assert "was pruned" in page.text
