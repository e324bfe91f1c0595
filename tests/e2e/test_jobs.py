"""Durable async jobs against the real server (uvicorn subprocesses), on SQLite and on a real
PostgreSQL server the tests start and stop: the life of tti, ttv and ttm jobs, cancel, owners,
limits, callbacks, retention, ``kill -9`` and restart, two servers on one database, and
``/v1/videos`` with the official ``openai`` SDK.

The generations are the scripted media test binding's: a number of steps of a set length with
progress, stopping between steps when cancelled, appending its prompt to ``runs.txt`` when a
run starts (so runs can be counted across processes)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, GOOD_KEY, LIMITED_KEY, base_config, media_instance
from tests.e2e.sse import parse_events
from tests.postgres import PostgresServer, missing_reason
from tests.processes import ServerProcess, start_lollms

pytestmark = pytest.mark.e2e

USER = {"X-API-Key": GOOD_KEY}
OTHER = {"X-API-Key": LIMITED_KEY}
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty job databases of one kind."""
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("sqlite")
        yield lambda: f"sqlite:///{folder / uuid.uuid4().hex}.db"
        return
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        yield lambda: server.create_database("jobs_" + uuid.uuid4().hex[:12])
    finally:
        server.stop()


class Jobs:
    """Servers on one job database, and the helpers the tests share."""

    def __init__(self, folder: Path, database_url: str, steps: int, step_seconds: float, **jobs: Any) -> None:
        self.folder = folder
        self.runs = folder / "runs.txt"
        media = {
            "type": "scripted_media_binding",
            "model_name": "steps",
            "steps": steps,
            "step_seconds": step_seconds,
            "runs_file": str(self.runs),
        }
        self.config = base_config(
            folder,
            None,
            resource_manager={"pools": {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 300}}},
            bindings={"media": media},
            defaults={
                "ttt_binding": "echo",
                "ttt_model": "echo",
                **{f"{kind}_binding": "media" for kind in ("tti", "ttv", "ttm")},
            },
            jobs={
                "database_url": database_url,
                "jobs_folder": str(folder / "outputs"),
                "lease_seconds": 4,  # short, for the restart tests; a busy 2-core CI box still renews it
                "poll_seconds": 0.2,
                **jobs,
            },
        )
        self.servers: list[ServerProcess] = []

    def start(self, name: str = "server") -> ServerProcess:
        workdir = self.folder / name
        workdir.mkdir(exist_ok=True)
        server = start_lollms(self.config, workdir, workdir / "server.log")
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def submit(
        self,
        server: ServerProcess,
        prompt: str,
        kind: str = "tti",
        headers: dict[str, str] = USER,
        **extra: Any,
    ) -> str:
        body = {"generation_type": kind, "prompt": prompt, **extra}
        response = httpx.post(server.url + "/api/v1/jobs", json=body, headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        view = response.json()
        assert view["status"] == "queued" and view["queue_position"] >= 1
        job_id: str = view["job_id"]
        return job_id

    def wait(
        self, server: ServerProcess, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = job(server, job_id)
            if until(view):
                return view
            assert time.monotonic() < deadline, f"job {job_id} stuck: {view}"
            time.sleep(0.1)

    def run_lines(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []


def job(server: ServerProcess, job_id: str, headers: dict[str, str] = USER) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def finished(view: dict[str, Any]) -> bool:
    return view["status"] in FINISHED


def pool_active(server: ServerProcess) -> int:
    pools = httpx.get(server.url + "/api/v1/status", headers=AUTH, timeout=10).json()["pools"]
    return int(next(pool for pool in pools if pool["name"] == "default")["active"])


@pytest.fixture
def jobs_factory(tmp_path: Path, database: Callable[[], str]) -> Iterator[Callable[..., Jobs]]:
    made: list[Jobs] = []

    def make(steps: int = 6, step_seconds: float = 0.1, **settings: Any) -> Jobs:
        jobs = Jobs(tmp_path / f"site-{len(made)}", database(), steps, step_seconds, **settings)
        jobs.folder.mkdir()
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.stop()


class CallbackCatcher(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        CallbackCatcher.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_the_life_of_tti_ttv_and_ttm_jobs(jobs_factory: Callable[..., Jobs]) -> None:
    catcher = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CallbackCatcher)
    threading.Thread(target=catcher.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{catcher.server_address[1]}/done"
    CallbackCatcher.received = []
    try:
        site = jobs_factory(steps=10, step_seconds=0.15, allowed_callback_hosts=["127.0.0.1"])
        server = site.start()
        ids = {
            kind: site.submit(server, f"a {kind} job", kind, callback_url=callback)
            for kind in ("tti", "ttv", "ttm")
        }
        # the first runs while the others wait behind it (pool limit 1), with their places
        first = site.wait(
            server, ids["tti"], lambda view: view["status"] == "running" and view["progress"] is not None
        )
        assert 1 <= first["progress"]["step"] <= 10 and first["progress"]["total"] == 10
        assert first["started_at"] >= first["created_at"] and first["attempts"] == 1
        waiting = job(server, ids["ttm"])
        assert waiting["status"] == "queued" and waiting["queue_position"] >= 1
        with httpx.stream(
            "GET", f"{server.url}/api/v1/jobs/{ids['ttv']}/events", headers=USER, timeout=90
        ) as events:
            seen = parse_events(events.read().decode())
        statuses = [event["status"] for event in seen]
        assert statuses[-1] == "succeeded" and "running" in statuses, statuses
        assert any(
            event["progress"] and event["progress"]["step"] < 10
            for event in seen
            if event["status"] == "running"
        )
        signatures = {
            "tti": (b"\x89PNG", "image/png"),
            "ttv": (b"GIF89a", "image/gif"),
            "ttm": (b"RIFF", "audio/wav"),
        }
        for kind, job_id in ids.items():
            view = site.wait(server, job_id, finished)
            assert view["status"] == "succeeded", view
            assert view["progress"] == {"step": 10, "total": 10, "fraction": 1.0}
            raw = httpx.get(server.url + view["outputs"][0]["url"], headers=USER, timeout=30)
            magic, mime = signatures[kind]
            assert raw.status_code == 200 and raw.headers["content-type"] == mime
            assert raw.content.startswith(magic) and len(raw.content) == view["outputs"][0]["bytes"]
            result = httpx.get(server.url + view["result_url"], headers=USER, timeout=30).json()
            output = result["output"][0]
            assert (
                base64.b64decode(output["data"]) == raw.content
            )  # the GenerateResponse, as /generate gives it
            assert output["metadata"]["binding"] == "media" and output["metadata"]["generation_type"] == kind
            assert result["request_id"] == job_id
        assert site.run_lines() == ["a tti job", "a ttv job", "a ttm job"]
        order = [job(server, ids[kind])["started_at"] for kind in ("tti", "ttv", "ttm")]
        assert order == sorted(order)
        listed = httpx.get(
            server.url + "/api/v1/jobs?status=succeeded&limit=10", headers=USER, timeout=30
        ).json()
        assert {item["id"] for item in listed["data"]} == set(ids.values())
        deadline = time.monotonic() + 15
        while len(CallbackCatcher.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(item["id"] for item in CallbackCatcher.received) == sorted(ids.values())
        assert all(item["status"] == "succeeded" for item in CallbackCatcher.received)
        # a finished job is deleted with its files
        folder = site.folder / "outputs" / ids["tti"]
        assert folder.is_dir()
        deleted = httpx.delete(f"{server.url}/api/v1/jobs/{ids['tti']}", headers=USER, timeout=30).json()
        assert deleted["deleted"] is True and not folder.exists()
        assert (
            httpx.get(f"{server.url}/api/v1/jobs/{ids['tti']}", headers=USER, timeout=30).status_code == 404
        )
    finally:
        catcher.shutdown()


def test_cancel_while_queued_and_while_running_frees_the_slot(jobs_factory: Callable[..., Jobs]) -> None:
    site = jobs_factory(steps=400, step_seconds=0.05)
    server = site.start()
    running = site.submit(server, "long")
    queued = site.submit(server, "never runs")
    site.wait(server, running, lambda view: view["status"] == "running" and view["progress"] is not None)
    cancelled = httpx.delete(f"{server.url}/api/v1/jobs/{queued}", headers=USER, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["deleted"] is False
    assert site.wait(server, queued, finished)["status"] == "cancelled"
    assert pool_active(server) == 1
    started = time.monotonic()
    httpx.delete(f"{server.url}/api/v1/jobs/{running}", headers=USER, timeout=30)
    view = site.wait(server, running, finished, timeout=30)
    assert view["status"] == "cancelled" and view["error"]["type"] == "cancelled"
    assert view["progress"]["step"] < 400
    deadline = time.monotonic() + 10
    while pool_active(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool_active(server) == 0, "the slot was not given back"
    assert time.monotonic() - started < 10
    assert site.run_lines() == ["long"]
    conflict = httpx.get(f"{server.url}/api/v1/jobs/{running}/result", headers=USER, timeout=30)
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict_error"


def test_keys_see_only_their_own_jobs_and_admins_see_all(jobs_factory: Callable[..., Jobs]) -> None:
    site = jobs_factory(steps=1, step_seconds=0.01)
    server = site.start()
    mine = site.submit(server, "mine")
    site.wait(server, mine, finished)
    for method, path in [
        ("GET", ""),
        ("GET", "/result"),
        ("GET", "/outputs/0"),
        ("GET", "/events"),
        ("DELETE", ""),
    ]:
        response = httpx.request(method, f"{server.url}/api/v1/jobs/{mine}{path}", headers=OTHER, timeout=30)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["type"] == "not_found_error"
    others = httpx.get(server.url + "/api/v1/jobs", headers=OTHER, timeout=30).json()["data"]
    assert others == []
    admin = httpx.get(server.url + "/api/v1/jobs", headers={"X-API-Key": ADMIN_KEY}, timeout=30).json()[
        "data"
    ]
    assert [item["id"] for item in admin] == [mine] and admin[0]["owner"] == "user"
    assert job(server, mine, {"X-API-Key": ADMIN_KEY})["status"] == "succeeded"
    unknown = httpx.get(f"{server.url}/api/v1/jobs/job_unknown", headers=USER, timeout=30)
    assert unknown.status_code == 404


def test_limits_callbacks_and_bad_jobs_are_clear_4xx(jobs_factory: Callable[..., Jobs]) -> None:
    site = jobs_factory(
        steps=200, step_seconds=0.05, max_jobs_per_key=2, allowed_callback_hosts=["hooks.example"]
    )
    server = site.start()
    url = server.url + "/api/v1/jobs"

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json=body, headers=USER, timeout=30)

    bad_host = post({"generation_type": "tti", "prompt": "x", "callback_url": "http://127.0.0.1:1/"})
    assert bad_host.status_code == 400 and bad_host.json()["error"]["param"] == "callback_url"
    unknown_binding = post({"generation_type": "tti", "prompt": "x", "binding_name": "nope"})
    assert unknown_binding.status_code == 404
    no_input = post({"generation_type": "tti"})
    assert no_input.status_code == 422 and no_input.json()["error"]["type"] == "validation_error"
    first, second = site.submit(server, "one"), site.submit(server, "two")
    over = post({"generation_type": "tti", "prompt": "three"})
    assert over.status_code == 429 and over.json()["error"]["type"] == "rate_limit_error", over.text
    assert int(over.headers["retry-after"]) >= 1
    for job_id in (first, second):
        httpx.delete(f"{url}/{job_id}", headers=USER, timeout=30)
        site.wait(server, job_id, finished, timeout=30)


def test_results_past_their_ttl_are_removed(jobs_factory: Callable[..., Jobs]) -> None:
    site = jobs_factory(steps=1, step_seconds=0.01, result_ttl_hours=1.5 / 3600, cleanup_interval_seconds=0.5)
    server = site.start()
    job_id = site.submit(server, "short-lived")
    view = site.wait(server, job_id, finished)
    assert view["status"] == "succeeded" and view["expires_at"] - view["finished_at"] == pytest.approx(1.5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=USER, timeout=30)
        if response.status_code == 404:
            break
        time.sleep(0.2)
    assert response.status_code == 404, "the expired job was not cleaned up"
    assert not (site.folder / "outputs" / job_id).exists()


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
def test_kill_9_with_one_job_running_and_two_queued(jobs_factory: Callable[..., Jobs], retry: bool) -> None:
    site = jobs_factory(steps=30, step_seconds=0.1, retry_interrupted=retry)
    server = site.start("first")
    ids = [site.submit(server, f"job {index}", kind) for index, kind in enumerate(("ttv", "tti", "ttm"))]
    site.wait(
        server,
        ids[0],
        lambda view: view["status"] == "running" and (view["progress"] or {}).get("step", 0) >= 2,
    )
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    restarted = site.start("second")
    views = [site.wait(restarted, job_id, finished, timeout=120) for job_id in ids]
    if retry:
        assert [view["status"] for view in views] == ["succeeded"] * 3, views
        assert views[0]["attempts"] == 2
        assert site.run_lines() == ["job 0", "job 0", "job 1", "job 2"]
    else:
        assert [view["status"] for view in views] == ["failed", "succeeded", "succeeded"], views
        assert views[0]["error"]["reason"] == "interrupted"
        assert site.run_lines() == ["job 0", "job 1", "job 2"]
    done = [view for view in views if view["status"] == "succeeded"]
    assert [view["started_at"] for view in done] == sorted(view["started_at"] for view in done)
    assert all(view["attempts"] == 1 for view in views[1:])


def test_a_job_that_kills_its_server_is_not_run_again_and_again(jobs_factory: Callable[..., Jobs]) -> None:
    """T3-02: a request that crashed the server process (a deep grammar segfaulting llama.cpp),
    sent as a job, crashed it again at each restart. Its attempt is stored before the run: a
    job whose process dies at its start fails ``crashed`` at the next start; one that dies later
    runs once more, and its second death ends it the same way."""
    site = jobs_factory(steps=30, step_seconds=0.1)
    server = site.start("first")
    poison = site.submit(server, "poison", parameters={"crash_at_step": 0})
    assert server.process.wait(60) == -signal.SIGKILL
    restarted = site.start("second")
    view = site.wait(restarted, poison, finished, timeout=60)  # once the dead lease expires (4 s)
    assert (view["status"], view["error"]["reason"], view["attempts"]) == ("failed", "crashed", 1), view
    assert site.run_lines() == ["poison"] and restarted.process.poll() is None

    late = site.submit(restarted, "late", parameters={"crash_at_step": 8})  # dies 0.8 s in
    assert restarted.process.wait(60) == -signal.SIGKILL
    third = site.start("third")
    assert third.process.wait(60) == -signal.SIGKILL  # the one retry, which dies the same way
    fourth = site.start("fourth")
    view = site.wait(fourth, late, finished, timeout=60)
    assert (view["status"], view["error"]["reason"], view["attempts"]) == ("failed", "crashed", 2), view
    assert site.run_lines() == ["poison", "late", "late"]
    fine = site.submit(fourth, "fine")
    assert site.wait(fourth, fine, finished)["status"] == "succeeded"
    assert fourth.process.poll() is None


def test_a_graceful_stop_lets_the_running_job_finish_and_requeues_the_others(
    jobs_factory: Callable[..., Jobs],
) -> None:
    site = jobs_factory(steps=20, step_seconds=0.1, retry_interrupted=False)
    site.config["server"]["shutdown_grace_seconds"] = 60
    server = site.start("first")
    ids = [site.submit(server, f"job {index}") for index in range(2)]
    site.wait(server, ids[0], lambda view: view["status"] == "running")
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(60)
    restarted = site.start("second")
    views = [site.wait(restarted, job_id, finished, timeout=60) for job_id in ids]
    assert [(view["status"], view["attempts"]) for view in views] == [("succeeded", 1)] * 2, views
    assert site.run_lines() == ["job 0", "job 1"]


def test_two_servers_on_one_database_never_run_a_job_twice(jobs_factory: Callable[..., Jobs]) -> None:
    site = jobs_factory(steps=3, step_seconds=0.05)
    servers = [site.start("one"), site.start("two")]
    ids = [site.submit(servers[index % 2], f"job {index}") for index in range(8)]
    views = [site.wait(servers[0], job_id, finished, timeout=120) for job_id in ids]
    assert [view["status"] for view in views] == ["succeeded"] * 8
    assert [view["attempts"] for view in views] == [1] * 8
    assert sorted(site.run_lines()) == sorted(f"job {index}" for index in range(8))


def test_video_jobs_with_the_openai_sdk(jobs_factory: Callable[..., Jobs]) -> None:
    openai = pytest.importorskip("openai")
    site = jobs_factory(steps=5, step_seconds=0.1)
    server = site.start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=GOOD_KEY, max_retries=0)
    if not hasattr(client, "videos"):
        pytest.skip(f"openai {openai.__version__} has no videos API")
    video = client.videos.create(prompt="a red square", model="media", size="720x1280", seconds="4")
    assert video.status in ("queued", "in_progress") and video.model == "media"
    deadline = time.monotonic() + 60
    while video.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, video
        time.sleep(0.2)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100 and video.completed_at is not None
    content = client.videos.download_content(video.id)
    assert content.content.startswith(b"GIF89a")
    listed = client.videos.list(limit=10)
    assert [item.id for item in listed.data] == [video.id]
    assert site.run_lines() == ["a red square"]
    deleted = client.videos.delete(video.id)
    assert deleted.deleted is True and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.BadRequestError):
        client.videos.create(prompt="", model="media")


def test_a_job_on_a_real_tiny_diffusion_model(tmp_path: Path, media_models_folder: Path) -> None:
    """The same life through the diffusers binding on the suite's tiny random-weight model."""
    site = Jobs(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}", 1, 0.0)
    site.config["bindings"]["images"] = {
        **media_instance("diffusers_binding", media_models_folder),
        "default_steps": 3,
        "default_width": 64,
        "default_height": 64,
    }
    site.config["defaults"].update(tti_binding="images", tti_model="tiny-sd")
    try:
        server = site.start()
        job_id = site.submit(server, "a lighthouse", "tti", parameters={"seed": 7})
        view = site.wait(server, job_id, finished, timeout=300)
        assert view["status"] == "succeeded", view
        raw = httpx.get(server.url + view["outputs"][0]["url"], headers=USER, timeout=30)
        assert raw.headers["content-type"] == "image/png"
        from PIL import Image

        assert Image.open(io.BytesIO(raw.content)).size == (64, 64)
        result = httpx.get(server.url + view["result_url"], headers=USER, timeout=30).json()
        metadata = result["output"][0]["metadata"]
        assert (metadata["binding"], metadata["model"], metadata["seed"]) == ("images", "tiny-sd", 7)
    finally:
        site.stop()
