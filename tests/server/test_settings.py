"""The settings model is the one source of the server's flags, environment names, help and README table."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from modeldeploy_server.settings import Settings, build_parser, env_name, flag, load_settings, settings_table

README = Path(__file__).resolve().parents[2] / "serving-image" / "README.md"


def test_every_field_has_a_docstring_and_a_flag() -> None:
    parser_help = build_parser().format_help()
    for field, info in Settings.model_fields.items():
        assert info.description, f"{field} needs a docstring"
        assert flag(field) in parser_help, field
        assert f"[{env_name(field)};" in parser_help, field


def test_flags_fill_every_field_and_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", "/env/model.onnx")
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("DRIFT_WINDOW", "500")
    settings = load_settings(
        [
            "--model",
            "/flag/sentiment.onnx",
            "--port",
            "8081",
            "--allow-non-finite",
            "--intra-op-spinning",
            "false",
            "--execution-providers",
            "cuda,cpu",
            "--retry-after-seconds",
            "7",
            "--max-batch-delay-ms",
            "2.5",
        ]
    )
    assert settings.model_path == Path("/flag/sentiment.onnx")
    assert settings.model_name == "sentiment"
    assert settings.port == 8081
    assert settings.drift_window == 500  # from the environment: no flag given
    assert settings.allow_non_finite is True
    assert settings.intra_op_spinning is False
    assert settings.execution_providers == ("cuda", "cpu")
    assert settings.retry_after_seconds == 7
    assert settings.max_batch_delay_ms == 2.5


def test_bad_flag_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    with pytest.raises(ValidationError) as caught:
        load_settings(["--model", "m.onnx", "--port", "eighty"])
    assert caught.value.errors()[0]["loc"] == ("port",)


def test_the_readme_table_is_generated_from_the_model() -> None:
    assert settings_table() in README.read_text(), (
        "refresh serving-image/README.md from modeldeploy_server.settings.settings_table()"
    )


def test_grpc_port_defaults_to_8081_and_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_PORT", raising=False)
    assert load_settings(["--model", "m.onnx"]).grpc_port == 8081
    monkeypatch.setenv("GRPC_PORT", "0")
    assert load_settings(["--model", "m.onnx"]).grpc_port == 0
    assert load_settings(["--model", "m.onnx", "--grpc-port", "9001"]).grpc_port == 9001


def test_a_kubernetes_service_link_in_a_port_variable_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Service named `grpc` puts GRPC_PORT=tcp://... into the namespace's pods."""
    monkeypatch.setenv("GRPC_PORT", "tcp://10.96.0.7:8081")
    with pytest.raises(ValidationError) as caught:
        load_settings(["--model", "m.onnx"])
    [error] = caught.value.errors()
    assert error["loc"] == ("grpc_port",) and "service link" in error["msg"] and "GRPC_PORT" in error["msg"]
