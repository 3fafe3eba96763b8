import pytest

from chattune.config import load_config, parse_overrides
from chattune.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["train.lr=1e-4", "method.lora.r=8", "train.report_to=[none]"])
    assert cfg.train.lr == 1e-4 and cfg.method.lora.r == 8 and cfg.train.report_to == ["none"]
    assert cfg.model.trust_remote_code is False


def test_unknown_key_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        load_config(p)


def test_bad_literal_lists_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.type: 'lorax' is not allowed; expected 'lora', 'qlora'"):
        load_config(None, ["method.type=lorax"])


def test_data_paths_accept_strings_and_resolve_beside_yaml(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: d.jsonl\n")
    cfg = load_config(p)
    assert cfg.data.train[0].path == str(tmp_path / "d.jsonl")


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["nonsense"])
