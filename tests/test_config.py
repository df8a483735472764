"""Unit tests for tuneloop.config: defaults, strict keys, exact messages, path resolution, serialization."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tuneloop.config import (
    Config,
    config_from_json,
    config_problems,
    json_schema,
    load_config,
    parse_config,
)
from tuneloop.errors import ConfigError
from tuneloop.methods import IA3Method, LoraMethod

SECTIONS = ["data", "model", "method", "quantization", "generation", "train", "gate", "registry", "monitor", "policy", "serve", "runtime"]


def write(folder: Path, text: str, name: str = "tuneloop.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_an_empty_section_loads_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "data: {}\n"))
    assert isinstance(cfg.method, LoraMethod)
    # rank, alpha and targets depend on the base: unset here, resolved from it (tests/test_methods.py)
    assert (cfg.method.r, cfg.method.alpha, cfg.method.target_modules) == (None, None, None)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate, cfg.learning_rate()) == (3, 16, None, 1e-3)
    assert (cfg.data.path, cfg.data.rev, cfg.data.eval_path, cfg.data.eval_fraction) == ("data/train.csv", "HEAD", None, 0.2)
    assert (cfg.quantization.bits, cfg.gate.metric, cfg.runtime.mode) == (0, "macro_f1", "local")
    assert cfg.registry.model_name == "tuneloop-classifier"


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "\n\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^config file '{re.escape(str(path))}' is empty; write at least the keys"):
        load_config(path)


def test_a_section_of_comments_only_is_that_section_defaults(tmp_path):
    assert load_config(write(tmp_path, "train:\n  # epochs: 9\ndata: {}\n")).train.epochs == 3


def test_every_default_section_is_present(tmp_path):
    dumped = load_config(write(tmp_path, "data: {}\n")).model_dump()
    assert list(dumped) == SECTIONS
    assert all(isinstance(dumped[name], dict) and dumped[name] for name in SECTIONS)


def test_a_section_overrides_only_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  epochs: 7\nmethod:\n  name: ia3\n"))
    assert cfg.train.epochs == 7
    assert cfg.train.batch_size == 16
    assert isinstance(cfg.method, IA3Method)
    assert (cfg.method.target_modules, cfg.learning_rate()) == (None, 3e-3)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^epochz: unknown key; remove it or fix its spelling"):
        load_config(write(tmp_path, "epochz: 3\n"))


def test_unknown_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.epochz: unknown key; remove it or fix its spelling"):
        load_config(write(tmp_path, "train:\n  epochz: 3\n"))


def test_unknown_key_inside_the_method(tmp_path):
    with pytest.raises(ConfigError, match=r"^method\.rank: unknown key"):
        load_config(write(tmp_path, "method:\n  name: lora\n  rank: 4\n"))


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r'^train\.epochs = "ten": input should be a valid integer.*; fix the value'):
        load_config(write(tmp_path, "train:\n  epochs: ten\n"))


def test_out_of_range_value_names_the_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"^gate\.min_accuracy = 2: input should be less than or equal to 1"):
        load_config(write(tmp_path, "gate:\n  min_accuracy: 2\n"))


def test_unknown_method_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"^method: unknown method 'lorax'; use one of: lora, dora, rslora, loftq, loha, lokr, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, full$"):
        load_config(write(tmp_path, "method:\n  name: lorax\n"))


def test_method_without_a_name_says_to_add_one(tmp_path):
    with pytest.raises(ConfigError, match=r"^method: no method name; add `name:` with one of: lora, dora, rslora, loftq, loha, lokr, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, full$"):
        load_config(write(tmp_path, "method:\n  r: 16\n"))


def test_config_problems_lists_every_problem():
    data = yaml.safe_load("train:\n  epochs: ten\n  epochz: 1\ngate:\n  min_accuracy: 2\n")
    problems = config_problems(data)
    assert len(problems) == 3
    assert [p.split(" ")[0].rstrip(":") for p in problems] == ["train.epochs", "train.epochz", "gate.min_accuracy"]


def test_parse_config_raises_the_first_problem_and_counts_the_rest(tmp_path):
    text = "train:\n  epochs: ten\n  epochz: 1\ngate:\n  min_accuracy: 2\n"
    with pytest.raises(ConfigError, match=r"^train\.epochs = .* \(and 2 more; run `tuneloop config validate`\)$"):
        load_config(write(tmp_path, text))


def test_valid_config_has_no_problems():
    assert config_problems({}) == []
    assert config_problems(None) == []


def test_a_non_mapping_config_is_one_problem():
    assert config_problems(["data", "model"]) == ["config must be a mapping of sections (data, model, ...), got list"]


def test_relative_paths_resolve_against_the_config_folder_when_sections_are_omitted(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # a different working folder must not matter
    cfg = load_config(write(folder, "data: {}\n"))
    assert cfg.data.repo == str(folder)
    assert cfg.registry.tracking_uri == f"sqlite:///{folder}/mlflow.db"
    assert cfg.registry.artifact_root == str(folder / "mlartifacts")
    assert cfg.runtime.pipeline_root == str(folder / "runs")


def test_relative_paths_resolve_when_written_out(tmp_path):
    text = (
        "data:\n  repo: ../data-repo\n"
        "registry:\n  tracking_uri: sqlite:///state/mlflow.db\n  artifact_root: state/art\n"
        "runtime:\n  pipeline_root: out/runs\n"
    )
    folder = tmp_path / "project"
    folder.mkdir()
    cfg = load_config(write(folder, text))
    assert cfg.data.repo == str(tmp_path / "data-repo")
    assert cfg.registry.tracking_uri == f"sqlite:///{folder}/state/mlflow.db"
    assert cfg.registry.artifact_root == str(folder / "state" / "art")
    assert cfg.runtime.pipeline_root == str(folder / "out" / "runs")


@pytest.mark.parametrize(
    "repo",
    ["https://github.com/org/data.git", "git@github.com:org/data.git", "ssh://git@host/org/data.git", "/srv/data"],
)
def test_urls_and_absolute_paths_are_kept(tmp_path, repo):
    cfg = load_config(write(tmp_path, f"data:\n  repo: {repo}\n"))
    assert cfg.data.repo == repo


def test_absolute_sqlite_and_remote_tracking_uris_are_kept(tmp_path):
    for uri in ["sqlite:////srv/mlflow.db", "http://127.0.0.1:5000"]:
        assert load_config(write(tmp_path, f"registry:\n  tracking_uri: {uri}\n")).registry.tracking_uri == uri


def test_json_round_trip_is_equal(tmp_path):
    cfg = load_config(write(tmp_path, "method:\n  name: ia3\ntrain:\n  epochs: 5\ndata:\n  labels: [a, b]\n"))
    again = config_from_json(cfg.to_json())
    assert again == cfg
    assert again.digest() == cfg.digest()


def test_json_round_trip_keeps_absolute_paths_elsewhere(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, "data: {}\n"))
    monkeypatch.chdir("/")
    assert config_from_json(cfg.to_json()).data.repo == str(tmp_path)


def test_digest_is_stable_across_loads(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 5\n")
    first, second = load_config(path).digest(), load_config(path).digest()
    assert first == second
    assert len(first) == 64 and int(first, 16) >= 0


def test_digest_changes_when_a_value_changes(tmp_path):
    five = load_config(write(tmp_path, "train:\n  epochs: 5\n")).digest()
    six = load_config(write(tmp_path, "train:\n  epochs: 6\n")).digest()
    assert five != six


def test_digest_ignores_spelling_out_a_default(tmp_path):
    assert load_config(write(tmp_path, "data: {}\n")).digest() == load_config(write(tmp_path, "train:\n  epochs: 3\n", "b.yaml")).digest()


def test_json_schema_has_the_top_level_sections():
    schema = json_schema()
    assert list(schema["properties"]) == SECTIONS
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # serializable, as the Helm chart's values schema needs


def test_missing_file_names_the_fix(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^config file '{re.escape(str(missing))}' not found; pass an existing file or run `tuneloop init DIR`$"):
        load_config(missing)


def test_invalid_yaml_names_the_line_and_the_fix(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n bad: indent\n")
    with pytest.raises(ConfigError, match=rf"^config file '{re.escape(str(path))}' is not valid YAML at line 3; fix the syntax$"):
        load_config(path)


def test_a_yaml_list_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match=r"^config must be a mapping of sections \(data, model, \.\.\.\), got list$"):
        load_config(write(tmp_path, "- data\n- model\n"))


def test_parse_config_without_root_leaves_paths_as_written():
    cfg = parse_config({"data": {"repo": "rel/repo"}})
    assert cfg.data.repo == "rel/repo"
    assert isinstance(cfg, Config)


def test_cluster_mode_needs_a_host():
    with pytest.raises(ConfigError, match="runtime.mode is kfp but runtime.host is empty; set it to the KFP API endpoint"):
        parse_config({"runtime": {"mode": "kfp"}})


def test_model_name_rejects_characters_mlflow_refuses():
    with pytest.raises(ConfigError, match="registry.model_name"):
        parse_config({"registry": {"model_name": "team/classifier"}})


def test_a_base_model_folder_next_to_the_config_resolves(tmp_path):
    (tmp_path / "models" / "bert").mkdir(parents=True)
    cfg = parse_config({"model": {"base": "models/bert"}}, tmp_path)
    assert cfg.model.base == str((tmp_path / "models" / "bert").resolve())
    assert parse_config({"model": {"base": "org/some-model"}}, tmp_path).model.base == "org/some-model"


STRICT_CASES = {
    "bool for an int": ("train:\n  epochs: true\n", 'train.epochs = true: input should be a valid integer; fix the value'),
    "string for a float": ('gate:\n  margin: "1.0"\n', 'gate.margin = "1.0": input should be a valid number'),
    "float for an int": ("method:\n  name: lora\n  r: 8.5\n", "method.r = 8.5: input should be a valid integer"),
    "int for a bool": ("data:\n  allow_duplicates: 1\n", "data.allow_duplicates = 1: input should be a valid boolean"),
    "empty text column": ('data:\n  text_column: ""\n', 'data.text_column = "": must not be empty'),
    "blank label column": ('data:\n  label_column: "  "\n', 'data.label_column = "  ": must not be empty'),
    "same text and label column": ("data:\n  text_column: x\n  label_column: x\n",
                                   "data.text_column and data.label_column are both 'x'; name two different columns"),
    "empty rev": ('data:\n  rev: ""\n', 'data.rev = "": must not be empty'),
    "path outside the repo": ("data:\n  path: ../other/train.csv\n",
                              "data.path = \"../other/train.csv\": must be a path inside data.repo (relative, no '..')"),
    "absolute path": ("data:\n  path: /etc/train.csv\n", 'data.path = "/etc/train.csv": must be a path inside data.repo'),
    "unsupported suffix": ("data:\n  path: data/train.xlsx\n", 'data.path = "data/train.xlsx": must end in .csv, .tsv or .jsonl'),
    "eval file is the train file": ("data:\n  eval_path: data/train.csv\n", "data.eval_path is data.path ('data/train.csv')"),
    "one label": ("data:\n  labels: [a]\n", 'data.labels = ["a"]: lists fewer than two labels; a classifier needs at least two'),
    "repeated label": ("data:\n  labels: [a, b, a]\n", "data.labels = [\"a\", \"b\", \"a\"]: lists ['a'] more than once"),
    "empty label": ('data:\n  labels: [a, ""]\n', 'data.labels.1 = "": must not be empty'),
    "zero cap": ("data:\n  max_train_rows: 1\n", "data.max_train_rows = 1: input should be greater than or equal to 2"),
    "negative seed": ("train:\n  seed: -1\n", "train.seed = -1: input should be greater than or equal to 0"),
    "seed beyond numpy": ("train:\n  seed: 4294967296\n", "train.seed = 4294967296: input should be less than or equal to 4294967295"),
    "NaN learning rate": ("train:\n  learning_rate: .nan\n", "train.learning_rate = NaN: input should be a finite number"),
    "huge learning rate": ("train:\n  learning_rate: 5.0\n", "train.learning_rate = 5.0: input should be less than or equal to 1"),
    "empty target module": ('method:\n  name: lora\n  target_modules: [query, ""]\n', 'method.target_modules.1 = "": must not be empty'),
    "repeated target module": ("method:\n  name: lora\n  target_modules: [query, query]\n", "lists ['query'] more than once"),
    "IA3 feed-forward not a target": (
        "method:\n  name: ia3\n  target_modules: [key, value]\n  feedforward_modules: [output.dense]\n",
        "method.feedforward_modules ['output.dense'] are not in method.target_modules ['key', 'value']; "
        "every feed-forward module must also be a target"),
    "empty base model": ('model:\n  base: ""\n', 'model.base = "": must not be empty'),
    "sqlite without a file": ("registry:\n  tracking_uri: 'sqlite:///'\n", "registry.tracking_uri 'sqlite:///' names no database file"),
    "empty experiment": ('registry:\n  experiment: ""\n', 'registry.experiment = "": must not be empty'),
    "host not a URL": ("runtime:\n  mode: kfp\n  host: kfp.local\n", 'runtime.host = "kfp.local": must be an http:// or https:// URL'),
    "image with a space": ("runtime:\n  image: my image\n", 'runtime.image = "my image": must not contain spaces'),
}


@pytest.mark.parametrize("case", sorted(STRICT_CASES))
def test_strict_values_are_refused_with_key_value_and_fix(tmp_path, case):
    text, message = STRICT_CASES[case]
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_repeated_key_is_refused_with_both_lines(tmp_path):
    with pytest.raises(ConfigError, match=r"^config key 'epochs' appears twice \(lines 2 and 3\); keep one of them$"):
        load_config(write(tmp_path, "train:\n  epochs: 2\n  epochs: 3\n"))


def test_a_repeated_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^config key 'train' appears twice \(lines 1 and 3\)"):
        load_config(write(tmp_path, "train:\n  epochs: 2\ntrain:\n  seed: 1\n"))


def test_exponent_floats_load_as_numbers(tmp_path):
    assert load_config(write(tmp_path, "train:\n  learning_rate: 1e-4\n  weight_decay: 2E-2\n")).train.learning_rate == 1e-4
    assert load_config(write(tmp_path, "train:\n  weight_decay: 2E-2\n", "b.yaml")).train.weight_decay == 0.02


def test_a_quoted_exponent_stays_a_string(tmp_path):
    with pytest.raises(ConfigError, match=r'^train\.learning_rate = "1e-4": input should be a valid number'):
        load_config(write(tmp_path, 'train:\n  learning_rate: "1e-4"\n'))


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"data:\n  text_column: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"cannot be read as UTF-8 text .*; save it as UTF-8$"):
        load_config(path)
