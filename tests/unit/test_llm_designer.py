"""The LLM designer against a local server speaking the Anthropic Messages API."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktrdr_tasks.datasets import REFERENCE_DATASETS
from ktrdr_tasks.design import design_strategy
from ktrdr_tasks.design.llm import build_prompt, tool_definition
from ktrdr_tasks.errors import DesignError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import REQUIRED_V3, StrategyConfigV3, check_any_strategy, is_v3

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
API_KEY = "sk-test-secret-key-123"

Reply = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class FakeAnthropic:
    """Records every request and answers with the scripted replies, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.replies: list[Reply] = []
        self.delay_s = 0.0


@pytest.fixture
def api() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append(body)
            fake.headers.append(dict(self.headers))
            time.sleep(fake.delay_s)
            status, payload = fake.replies.pop(0)(body) if fake.replies else (500, {})
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def settings(tmp_path: Path, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "strategies_dir": tmp_path / "strategies",
        "designer": "anthropic",
        "anthropic_api_key": API_KEY,
        "anthropic_base_url": base_url,
        "anthropic_timeout_s": 5.0,
        "strategy_format": "v2",  # the v2 answers below; the v3 tests ask for v3
    }
    values.update(overrides)
    return Settings(**values)


def good_strategy() -> dict[str, Any]:
    document = load_strategy_file(STRATEGIES / "eurusd_1h_stoch_cci_roc.yaml")
    document["name"] = "llm_stoch_cci_roc"
    return document


def tool_call(strategy: dict[str, Any], call_id: str = "toolu_1") -> Reply:
    def reply(_: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "stop_reason": "tool_use",
            "content": [
                {"type": "tool_use", "id": call_id, "name": "save_strategy", "input": strategy}
            ],
        }

    return reply


def broken_strategy() -> dict[str, Any]:
    document = copy.deepcopy(good_strategy())
    document["fuzzy_sets"]["cci_20"]["neutral"]["type"] = "bell"
    del document["decisions"]["position_awareness"]
    return document


def test_a_valid_tool_call_is_validated_and_saved(tmp_path, api):
    fake, url = api
    fake.replies = [tool_call(good_strategy())]
    result = design_strategy(settings(tmp_path, url), [{"strategy_name": "old"}])
    assert result.designer == "anthropic"
    assert result.path == tmp_path / "strategies" / "llm_stoch_cci_roc.yaml"
    assert check_any_strategy(load_strategy_file(result.path)).name == "llm_stoch_cci_roc"
    assert result.hypothesis == good_strategy()["description"]
    (request,) = fake.requests
    assert request["tool_choice"] == {"type": "tool", "name": "save_strategy"}
    assert request["tools"][0]["name"] == "save_strategy"
    assert request["tools"][0]["input_schema"]["type"] == "object"
    prompt = request["messages"][0]["content"]
    assert "EURUSD 1h" in prompt and "BollingerBandWidth" in prompt and "old" in prompt
    assert fake.headers[0]["x-api-key"] == API_KEY
    assert fake.headers[0]["anthropic-version"] == "2023-06-01"


def test_an_invalid_design_gets_one_correction_turn(tmp_path, api):
    fake, url = api
    fake.replies = [tool_call(broken_strategy(), "toolu_bad"), tool_call(good_strategy())]
    result = design_strategy(settings(tmp_path, url), [])
    assert result.path.exists()
    assert len(fake.requests) == 2
    correction = fake.requests[1]["messages"]
    assert [m["role"] for m in correction] == ["user", "assistant", "user"]
    (block,) = correction[2]["content"]
    assert block["type"] == "tool_result"
    assert block["tool_use_id"] == "toolu_bad"
    assert block["is_error"] is True
    assert "fuzzy_sets.cci_20.neutral" in block["content"]
    assert "decisions.position_awareness" in block["content"]


def test_invalid_twice_is_a_design_error_naming_the_fields(tmp_path, api):
    fake, url = api
    fake.replies = [tool_call(broken_strategy()), tool_call(broken_strategy())]
    with pytest.raises(DesignError) as caught:
        design_strategy(settings(tmp_path, url), [])
    assert "fuzzy_sets.cci_20.neutral" in str(caught.value)
    assert "decisions.position_awareness" in str(caught.value)
    assert len(fake.requests) == 2
    assert not (tmp_path / "strategies").exists() or not list((tmp_path / "strategies").iterdir())


def test_a_timeout_is_a_clear_design_error(tmp_path, api):
    fake, url = api
    fake.delay_s = 1.0
    fake.replies = [tool_call(good_strategy())]
    with pytest.raises(DesignError, match=r"did not answer within 0\.2s"):
        design_strategy(settings(tmp_path, url, anthropic_timeout_s=0.2), [])


def test_an_http_error_is_a_design_error_without_the_key(tmp_path, api):
    fake, url = api
    fake.replies = [lambda _: (401, {"type": "error", "error": {"message": "invalid x-api-key"}})]
    with pytest.raises(DesignError, match="answered 401: invalid x-api-key") as caught:
        design_strategy(settings(tmp_path, url), [])
    assert API_KEY not in str(caught.value)


def test_an_unreachable_api_is_a_design_error(tmp_path):
    with pytest.raises(DesignError, match="cannot reach the Anthropic API"):
        design_strategy(settings(tmp_path, "http://127.0.0.1:9"), [])


def test_a_missing_key_is_a_clear_error_before_any_request(tmp_path, api):
    fake, url = api
    with pytest.raises(DesignError, match="ANTHROPIC_API_KEY"):
        design_strategy(settings(tmp_path, url, anthropic_api_key=None), [])
    assert fake.requests == []


def test_a_bad_name_is_sanitised_and_an_existing_file_kept(tmp_path, api):
    fake, url = api
    strategy = good_strategy()
    strategy["name"] = "My LLM strategy v1.2"
    fake.replies = [tool_call(strategy)]
    existing = tmp_path / "strategies" / "My_LLM_strategy_v1_2.yaml"
    existing.parent.mkdir(parents=True)
    existing.write_text("sentinel")
    result = design_strategy(settings(tmp_path, url), [])
    assert result.name.startswith("My_LLM_strategy_v1_2_")
    assert yaml.safe_load(result.path.read_text())["name"] == result.name == result.path.stem
    assert existing.read_text() == "sentinel"


def test_a_design_already_in_history_is_sent_back_for_correction(tmp_path, api):
    fake, url = api
    first_settings = settings(tmp_path / "a", url)
    fake.replies = [tool_call(good_strategy())]
    first = design_strategy(first_settings, [])
    fake.replies = [tool_call(good_strategy()), tool_call(good_strategy())]
    with pytest.raises(DesignError, match="repeats one already tried"):
        design_strategy(settings(tmp_path / "b", url), [{"fingerprint": first.fingerprint}])


def good_v3_strategy() -> dict[str, Any]:
    document = load_strategy_file(STRATEGIES / "eurusd_1h_stoch_cci_roc_v3.yaml")
    document["name"] = "llm_v3_stoch_cci_roc"
    return document


def test_a_v3_design_is_asked_for_validated_and_saved(tmp_path, api):
    fake, url = api
    fake.replies = [tool_call(good_v3_strategy())]
    result = design_strategy(settings(tmp_path, url, strategy_format="v3"), [])
    document = load_strategy_file(result.path)
    assert is_v3(document)
    assert isinstance(check_any_strategy(document, stem=result.path.stem), StrategyConfigV3)
    (request,) = fake.requests
    schema = request["tools"][0]["input_schema"]
    assert set(REQUIRED_V3) <= set(schema["required"])
    assert schema["properties"]["indicators"]["type"] == "object"
    assert schema["properties"]["nn_inputs"]["type"] == "array"
    prompt = request["messages"][0]["content"]
    assert "ktrdr v3 strategy" in prompt and "nn_inputs" in prompt
    assert "bollingerbandwidth" in prompt and "outputs line, signal, histogram" in prompt
    assert "Epochs go HERE" in prompt


def test_a_v2_answer_to_a_v3_request_is_sent_back(tmp_path, api):
    fake, url = api
    fake.replies = [tool_call(good_strategy(), "toolu_v2"), tool_call(good_v3_strategy())]
    result = design_strategy(settings(tmp_path, url, strategy_format="v3"), [])
    assert is_v3(load_strategy_file(result.path))
    (block,) = fake.requests[1]["messages"][2]["content"]
    assert block["is_error"] is True and "write ktrdr v3" in block["content"]


def test_the_prompt_shows_the_newest_twenty_of_a_newest_first_history():
    history = [{"strategy_name": f"cycle_{n:02d}"} for n in range(50, 0, -1)]  # newest first
    prompt = build_prompt(list(REFERENCE_DATASETS), history, "v3")
    shown = [n for n in range(1, 51) if f'"cycle_{n:02d}"' in prompt]
    assert shown == list(range(31, 51))
    assert "newest 20 of 50 designs, newest first" in prompt
    assert prompt.index("cycle_50") < prompt.index("cycle_31")


def test_the_v2_tool_keeps_the_v2_shape():
    schema = tool_definition("v2")["input_schema"]
    assert schema["properties"]["indicators"]["type"] == "array"
    assert "nn_inputs" not in schema["properties"]
