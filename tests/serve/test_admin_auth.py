"""Admin routes (load, reload, unload; only inside --runs; never disturbing requests in flight)
and the API key."""

from __future__ import annotations

import shutil
import threading

import httpx
import openai
import pytest

from tunelab.serve.api import ServerState, create_app
from tunelab.serve.catalog import content_hash
from tunelab.serve.engine import Scheduler
from tunelab.serve.server import BackgroundServer, load_adapters, plan_runs

DIVERSE = {"no_repeat_ngram_size": 1}


def ask(client, model: str, prompt: str = "reverse: abc") -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8,
        extra_body=DIVERSE,
    )  # fmt: skip
    return reply.choices[0].message.content


def start(root, api_key=None, allow_admin=True):
    adapters = load_adapters(plan_runs([root], {}, None))
    state = ServerState(adapters, Scheduler(adapters), roots=[root], api_key=api_key,
                        allow_admin=allow_admin)  # fmt: skip
    return BackgroundServer(create_app(state))


@pytest.fixture(scope="module")
def admin(method_runs, tmp_path_factory, make_run):
    """A server over a folder holding copies of lora_a and prompt (and one run on another base
    and one corrupt run), plus a reference server over every method run."""
    root = tmp_path_factory.mktemp("admin-runs")
    for name in ("lora_a", "prompt"):
        shutil.copytree(method_runs[name], root / name)
    reference = start(next(iter(method_runs.values())).parent, allow_admin=False)
    with start(root) as server, reference:
        server.root = root
        server.reference = openai.OpenAI(base_url=f"{reference.url}/v1", api_key="x", max_retries=0)
        yield server


def post(server, route: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/admin/{route}", json=body, timeout=60)


def test_load_reload_and_unload(admin, method_runs):
    client = openai.OpenAI(base_url=f"{admin.url}/v1", api_key="x", max_retries=0)
    expected = {name: ask(admin.reference, name) for name in ("lora_a", "lora_b", "ia3")}
    assert len(set(expected.values())) == 3
    shutil.copytree(method_runs["lora_b"], admin.root / "incoming")
    loaded = post(admin, "load", name="extra", run="incoming")
    assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
    assert (
        ask(client, "extra") == expected["lora_b"] and ask(client, "lora_a") == expected["lora_a"]
    )
    shutil.rmtree(admin.root / "incoming" / "adapter")  # new weights in the same folder
    shutil.copytree(method_runs["ia3"] / "adapter", admin.root / "incoming" / "adapter")
    for name in ("config.yaml", "summary.json"):
        shutil.copy(method_runs["ia3"] / name, admin.root / "incoming" / name)
    reloaded = post(admin, "load", name="extra", run=str(admin.root / "incoming"))
    assert reloaded.json()["status"] == "reloaded"
    assert reloaded.json()["content_hash"] == content_hash(method_runs["ia3"])
    card = client.models.retrieve("extra")
    assert card.content_hash == content_hash(method_runs["ia3"]) and card.method == "ia3"
    assert ask(client, "extra") == expected["ia3"] and ask(client, "lora_a") == expected["lora_a"]
    assert post(admin, "unload", name="extra").json()["status"] == "unloaded"
    with pytest.raises(openai.NotFoundError):
        ask(client, "extra")
    gone = post(admin, "unload", name="extra")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_loads_outside_runs_or_of_bad_runs_are_refused(admin, method_runs, tmp_path, make_run):
    outside = method_runs["lora_b"]
    (admin.root / "link").symlink_to(outside, target_is_directory=True)
    make_run(admin.root, "seed1", "lora", 1e-2, seed=1)
    shutil.copytree(method_runs["lora_b"], admin.root / "corrupt")
    weights = next((admin.root / "corrupt" / "adapter").glob("*.safetensors"))
    weights.write_bytes(b"\x00" * 64)
    shutil.copytree(method_runs["lora_b"], admin.root / "pickled")
    (admin.root / "pickled" / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04")
    cases = {
        "../" + outside.parent.name + "/lora_b": "path_outside_runs",
        str(outside): "path_outside_runs",
        "link": "path_outside_runs",
        "lora_a/../../x": "path_outside_runs",
        "missing": "not_a_run",
        "seed1": "load_failed",
        "corrupt": "load_failed",
        "pickled": "load_failed",
    }
    client = openai.OpenAI(base_url=f"{admin.url}/v1", api_key="x", max_retries=0)
    before = ask(client, "lora_a")
    stream = threading.Thread(target=lambda: results.append(ask(client, "lora_a")))
    results: list[str] = []
    stream.start()  # a request in flight while the loads fail
    for run, code in cases.items():
        response = post(admin, "load", name="bad", run=run)
        assert response.status_code == 400, (run, response.text)
        assert response.json()["error"]["code"] == code, run
    stream.join()
    assert results == [before] and ask(client, "lora_a") == before
    assert "every run must share the base model" in post(admin, "load", name="b", run="seed1").text
    assert "only safetensors" in post(admin, "load", name="b", run="pickled").text
    assert [m.id for m in client.models.list().data] == ["base", "lora_a", "prompt"]
    assert post(admin, "load", name="base", run="lora_a").status_code == 400


def test_admin_routes_exist_only_with_allow_admin(method_runs):
    with start(method_runs["lora_a"].parent, allow_admin=False) as server:
        response = post(server, "load", name="x", run="lora_a")
        assert response.status_code == 404 and "error" in response.json()


def test_api_key_is_required_everywhere_but_the_page(method_runs):
    with start(method_runs["lora_a"].parent, api_key="s3cret") as server:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        for route in ("/v1/models", "/tunelab/runs", "/tunelab/reports"):
            missing = httpx.get(server.url + route)
            assert (
                missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
            )
        assert post(server, "load", name="x", run="lora_a").status_code == 401
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert "lora_a" in [m.id for m in right.models.list().data]
        assert httpx.get(server.url + "/").status_code == 200
