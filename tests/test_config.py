import pytest

from chattune.config import load_config
from chattune.config_overrides import parse_overrides
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


# ------------------------------------------------------------------------------------- the schema documents itself


def test_every_field_and_section_has_a_description():
    from pydantic import BaseModel

    from chattune.config import Config, DataSource

    def undocumented(model: type[BaseModel], prefix: str) -> list[str]:
        missing = []
        for name, f in model.model_fields.items():
            if not (f.description or "").strip():
                missing.append(prefix + name)
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                missing += undocumented(f.annotation, f"{prefix}{name}.")
        return missing

    assert undocumented(Config, "") + undocumented(DataSource, "data.train[].") == []


def test_chattune_config_lists_every_field_and_its_yaml_loads_to_the_defaults(tmp_path):
    from typer.testing import CliRunner

    from chattune.cli import app
    from chattune.config import Config
    from chattune.config_doc import field_docs

    res = CliRunner().invoke(app, ["config"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    keys = [d.key for d in field_docs()]
    assert {"train.lr", "method.lora.r", "serve.max_body_bytes", "data.train[].columns"} <= set(keys)
    assert [k for k in keys if k not in res.output] == []

    res = CliRunner().invoke(app, ["config", "--yaml"])
    assert res.exit_code == 0, res.output
    (tmp_path / "all.yaml").write_text(res.output, encoding="utf-8")
    assert load_config(tmp_path / "all.yaml") == Config()
    assert "# Peak learning rate. (float)\n  lr: 0.0002\n" in res.output


def test_unknown_key_points_at_the_command_that_lists_the_fields(tmp_path):
    from typer.testing import CliRunner

    from chattune.cli import app

    with pytest.raises(ConfigError, match="`chattune config`"):
        load_config(None, ["train.lrr=1"])
    assert CliRunner().invoke(app, ["config", "--help"]).exit_code == 0


# ------------------------------------------------------------------------------------------- cross-field rules

RULES = [
    (["train.load_best_model_at_end=true"], "load_best_model_at_end needs an eval set"),
    (["train.load_best_model_at_end=true", "data.eval_ratio=0.1", "train.eval_steps=5"],
     "needs train.eval_steps and train.save_steps both set"),
    (["train.load_best_model_at_end=true", "data.eval_ratio=0.1", "train.eval_steps=4", "train.save_steps=6"],
     r"train.save_steps \(6\) must be a multiple of train.eval_steps \(4\)"),
    (["train.deepspeed=zero3"], "set train.distributed: deepspeed"),
    (["method.type=qlora", "train.distributed=fsdp"], "qlora with train.distributed: fsdp is not supported"),
    (["method.type=qlora", "train.distributed=deepspeed", "train.deepspeed=zero3"], "qlora with DeepSpeed ZeRO-3"),
]


@pytest.mark.parametrize("overrides,message", RULES)
def test_each_cross_field_rule_fails_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "chattune config" in str(e.value)


def test_consistent_combinations_pass():
    ok = load_config(None, ["train.load_best_model_at_end=true", "data.eval_ratio=0.1", "train.eval_steps=4",
                            "train.save_steps=8"])
    assert ok.train.load_best_model_at_end
    assert load_config(None, ["method.type=qlora", "train.distributed=deepspeed", "train.deepspeed=zero2"])
    assert load_config(None, ["train.distributed=fsdp"]).train.distributed == "fsdp"


def test_qlora_refuses_a_zero3_json_file(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match="ZeRO-3"):
        load_config(None, ["method.type=qlora", "train.distributed=deepspeed", f"train.deepspeed={ds}"])


def test_every_broken_rule_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.load_best_model_at_end=true", "method.type=qlora", "train.distributed=fsdp"])
    assert "eval set" in str(e.value) and "fsdp is not supported" in str(e.value)


def test_bad_combination_fails_in_well_under_a_second_before_data_or_model(tmp_path, monkeypatch):
    """A 14B QLoRA+FSDP typo must not cost a tokenizing pass and a model load: `chattune train` refuses at load."""
    import time

    from typer.testing import CliRunner

    import chattune.data.dataset
    import chattune.model.load
    from chattune.cli import app

    def touched(*a, **k):
        raise AssertionError("data or model work started before the config was validated")

    monkeypatch.setattr(chattune.data.dataset, "build_datasets", touched)
    monkeypatch.setattr(chattune.model.load, "load_model", touched)
    monkeypatch.setattr(chattune.model.load, "load_tokenizer", touched)
    cfg = tmp_path / "big.yaml"
    cfg.write_text("model: {name_or_path: Qwen/Qwen3-14B}\ndata: {train: missing.jsonl}\n"
                   "method: {type: qlora}\ntrain: {distributed: fsdp}\n")
    start = time.process_time()  # CPU time: what the command costs, whatever else the machine runs
    res = CliRunner().invoke(app, ["train", str(cfg)])
    seconds = time.process_time() - start
    assert isinstance(res.exception, ConfigError), res.output  # `chattune` (main) prints it and exits 2
    assert "qlora with train.distributed: fsdp is not supported" in str(res.exception)
    assert seconds < 0.5, seconds
