"""`tuneloop predict` and the adapter contract it loads through: no pickles, the config's base model.

A registry on a sqlite file holds four versions of real trained adapters: 1 good (champion), 2
trained on another base model, 3 the good adapter with a pickle beside its safetensors, 4 the
good adapter with its safetensors cut short. Commands run through the real entry point.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import tiny_config_text
from tuneloop import evaluation, modeling, registry, synthetic, training
from tuneloop.config import load_config
from tuneloop.errors import RegistryError

TUNELOOP = shutil.which("tuneloop")
pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")

TEXTS = [text for text, _ in synthetic.generate_tickets(2, 6, seed=5)]
FIX = "re-register the adapter from safetensors weights"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=600)


class _TouchOnLoad:
    """Unpickling this creates `path`: proof of whether a pickle was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def other_base(folder: Path, tokenizer_from: Path) -> Path:
    """conftest's tiny BERT architecture and tokenizer with other random weights."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig.from_pretrained(str(tokenizer_from))
    BertForSequenceClassification(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(folder))
    return folder


def record_for(adapter_dir: Path) -> registry.VersionRecord:
    """The registry contract of an adapter, filled from its own metadata (no pipeline run behind it)."""
    meta = modeling.read_adapter_meta(adapter_dir)
    return registry.VersionRecord(
        base_model=meta.base_model, base_sha256=meta.base_sha256, tokenizer_sha256=meta.tokenizer_sha256,
        task=meta.task, labels=meta.labels, method=meta.method["name"], method_config=meta.method,
        quantization=meta.quantization, libraries={}, data_repo="", data_rev="", data_path="", data_sha256={},
        config_sha256="", pipeline_run="", metrics={}, gate="passed", gate_reasons=["test"], champion_version=None,
    )


def copy_adapter(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


class Setup:
    """The config, the adapters behind each version, and the marker a deserialized pickle would create."""

    def __init__(self, root: Path, tiny_model: Path) -> None:
        self.root, self.base = root, tiny_model
        self.config = root / "tuneloop.yaml"
        self.config.write_text(tiny_config_text(tiny_model))
        cfg = load_config(self.config)
        frame = pd.DataFrame(synthetic.generate_tickets(1, 80, seed=0), columns=["text", "label"])
        self.good = Path(training.train(frame, cfg, root / "train-good").adapter_dir)
        self.other_base = other_base(root / "other-base", tiny_model)
        other_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": str(self.other_base)})})
        self.other = Path(training.train(frame, other_cfg, root / "train-other").adapter_dir)
        self.marker = root / "pickle-was-loaded"
        self.pickled = copy_adapter(self.good, root / "pickled")
        (self.pickled / "adapter_model.bin").write_bytes(pickle.dumps(_TouchOnLoad(self.marker)))
        self.truncated = copy_adapter(self.good, root / "truncated")
        weights = self.truncated / modeling.ADAPTER_WEIGHTS
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 100])
        for number, adapter in enumerate((self.good, self.other, self.pickled, self.truncated), start=1):
            candidate = registry.Candidate(adapter_dir=adapter, record=record_for(adapter), params={}, metrics={}, reports={})
            assert registry.register(cfg.registry, candidate, f"test-{number}").version == str(number)
        registry.promote(cfg.registry, "1", None, "test champion")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model) -> Setup:
    return Setup(tmp_path_factory.mktemp("predict"), tiny_model)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command (exit 1, nothing on stdout)."""
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == ""
    assert run.stderr.endswith("\n") and run.stderr.count("\n") == 1, run.stderr
    return run.stderr.rstrip("\n")


# --- the CLI end to end ----------------------------------------------------------------------------


def test_predict_json_gives_the_labels_and_probabilities_of_the_champion(setup):
    run = cli("predict", *TEXTS, "--json", "--config", str(setup.config))
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    labels, scores, _ = evaluation.predict_scored(setup.good, TEXTS, "cpu")
    assert [row["text"] for row in rows] == TEXTS
    assert [row["label"] for row in rows] == labels == evaluation.predict(setup.good, TEXTS, "cpu")[0]
    assert [row["score"] for row in rows] == [round(score, 4) for score in scores]
    assert all(1 / len(synthetic.LABELS) <= row["score"] <= 1 for row in rows)


def test_predict_prints_label_score_and_cut_text_per_row(setup):
    short, long_text = "my card was declined", "my invoice\nis wrong " * 20
    run = cli("predict", short, long_text, "--version", "1", "--config", str(setup.config))
    assert run.returncode == 0, run.stderr
    (label_a, label_b), (score_a, score_b), _ = evaluation.predict_scored(setup.good, [short, long_text], "cpu")
    width = max(len(label_a), len(label_b))
    cut = " ".join(long_text.split())[:59] + "…"
    assert run.stdout.splitlines() == [
        f"{label_a.ljust(width)}  {score_a:.4f}  {short}", f"{label_b.ljust(width)}  {score_b:.4f}  {cut}",
    ]


@pytest.mark.parametrize("name", ["texts.txt", "texts.csv", "texts.jsonl"])
def test_predict_reads_texts_from_a_file(setup, name):
    path = setup.root / name
    if name.endswith(".csv"):
        path.write_text("id,text\n" + "".join(f'{i},"{text}"\n' for i, text in enumerate(TEXTS)))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(TEXTS)))
    else:
        path.write_text("\n".join(TEXTS) + "\n\n")
    run = cli("predict", "--file", str(path), "--json", "--config", str(setup.config))
    assert run.returncode == 0, run.stderr
    assert [row["text"] for row in json.loads(run.stdout)] == TEXTS
    assert [row["label"] for row in json.loads(run.stdout)] == evaluation.predict(setup.good, TEXTS, "cpu")[0]


def test_a_pickle_beside_the_safetensors_is_refused_and_never_loaded(setup):
    line = one_error_line(cli("predict", "hello", "--version", "3", "--config", str(setup.config)))
    assert re.fullmatch(
        r"error: RegistryError: version 3 of test-model: adapter file /\S+/adapter/adapter_model\.bin is a pickle "
        rf"\(\.bin files can run code when loaded\) and is refused; {FIX}", line,
    ), line
    assert not setup.marker.exists()


def test_a_truncated_safetensors_is_refused(setup):
    line = one_error_line(cli("predict", "hello", "--version", "4", "--config", str(setup.config)))
    assert re.fullmatch(
        r"error: RegistryError: version 4 of test-model: adapter file /\S+/adapter/adapter_model\.safetensors is not a "
        rf"valid safetensors file \(tensor '[^']+' has data offsets \[\d+, \d+\] outside the file's \d+ data bytes\); {FIX}",
        line,
    ), line


def test_a_version_trained_on_another_base_is_refused_naming_both_hashes(setup):
    here, _ = modeling.fingerprint(setup.base)
    recorded = modeling.read_adapter_meta(setup.other).base_sha256
    assert here != recorded
    line = one_error_line(cli("predict", "hello", "--version", "2", "--config", str(setup.config)))
    expected = (
        f"error: RegistryError: version 2 of test-model: adapter ADAPTER does not fit model.base '{setup.base}' "
        f"(base weights hash {here[:12]} here but {recorded[:12]} at training); use the base it was trained on "
        f"({setup.other_base}) as model.base in the config, or retrain the adapter on '{setup.base}'"
    )
    assert re.fullmatch(re.escape(expected).replace("ADAPTER", r"/\S+/adapter"), line), line


def test_load_adapter_refuses_a_tokenizer_other_than_the_recorded_one(setup, tmp_path):
    adapter = copy_adapter(setup.good, tmp_path / "adapter")
    meta = json.loads((adapter / modeling.ADAPTER_META).read_text())
    _, tokenizer_here = modeling.fingerprint(setup.base)
    meta["tokenizer_sha256"] = "ab" * 32
    (adapter / modeling.ADAPTER_META).write_text(json.dumps(meta))
    with pytest.raises(RegistryError) as given:
        modeling.load_adapter(adapter, "cpu", base=str(setup.base))
    assert str(given.value) == (
        f"adapter {adapter} does not fit model.base '{setup.base}' (tokenizer hash {tokenizer_here[:12]} here but "
        f"abababababab at training); use the base it was trained on ({setup.base}) as model.base in the config, "
        f"or retrain the adapter on '{setup.base}'"
    )
    with pytest.raises(RegistryError) as recorded:  # no base given: the base the adapter names itself
        modeling.load_adapter(adapter, "cpu")
    assert str(recorded.value) == (
        f"adapter {adapter} was trained on {setup.base}, which differs here (tokenizer hash {tokenizer_here[:12]} here "
        "but abababababab at training); install the original base model, or retrain the adapter"
    )


def test_load_adapter_on_the_config_base_predicts_like_evaluation(setup):
    texts = TEXTS[:3]
    model, tokenizer, meta = modeling.load_adapter(setup.good, "cpu", base=str(setup.base))
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=meta.max_length, return_tensors="pt")).logits
    assert [meta.labels[i] for i in logits.argmax(-1).tolist()] == evaluation.predict(setup.good, texts, "cpu")[0]


BAD_INPUTS = [
    pytest.param((), "error: ConfigError: no texts to classify; pass them as arguments or with --file FILE", id="no-text"),
    pytest.param(("hi", "--file", "FILE"), "error: ConfigError: pass texts as arguments or --file FILE, not both", id="text-and-file"),
    pytest.param(("--file", "EMPTY"), "error: DataError: --file 'EMPTY' holds no texts; write one text per line, "
                 "or a .csv/.jsonl with a 'text' column", id="empty-file"),
    pytest.param(("--file", "NOCOLUMN"), "error: DataError: --file 'NOCOLUMN' has no column 'text' (found: body, id); "
                 "name the text column text, or set data.text_column", id="csv-without-text"),
    pytest.param(("hi", "--alias", "newest"), "error: ConfigError: --alias 'newest' is not an alias; use champion or "
                 "challenger, or --version N", id="unknown-alias"),
    pytest.param(("hi", "--alias", "champion", "--version", "1"), "error: ConfigError: --alias champion and --version 1 "
                 "are exclusive; pass one of them (default: --alias champion)", id="alias-and-version"),
    pytest.param(("hi", "--alias", "challenger"), "error: RegistryError: test-model has no challenger yet; run "
                 "`tuneloop run` (or name a version number)", id="unset-alias"),
    pytest.param(("hi", "--version", "99"), "error: RegistryError: test-model has no version 99; "
                 "`tuneloop registry status` lists the versions", id="missing-version"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_1(setup, args, message):
    files = {"FILE": setup.root / "one.txt", "EMPTY": setup.root / "empty.txt", "NOCOLUMN": setup.root / "body.csv"}
    files["FILE"].write_text("hello\n")
    files["EMPTY"].write_text("\n  \n")
    files["NOCOLUMN"].write_text("body,id\nhello,1\n")
    for key, path in files.items():
        args = tuple(str(path) if arg == key else arg for arg in args)
        message = message.replace(f"'{key}'", repr(str(path)))
    assert one_error_line(cli("predict", *args, "--config", str(setup.config))) == message


# --- check_adapter_files on its own ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", modeling.PICKLE_SUFFIXES)
def test_every_pickle_suffix_is_refused(setup, tmp_path, suffix):
    adapter = copy_adapter(setup.good, tmp_path / "adapter")
    (adapter / "nested").mkdir()
    (adapter / "nested" / f"weights{suffix.upper()}").write_bytes(b"\x80\x04N.")
    path = adapter / "nested" / f"weights{suffix.upper()}"
    with pytest.raises(RegistryError) as refused:
        modeling.check_adapter_files(adapter)
    assert str(refused.value) == (
        f"adapter file {path} is a pickle ({suffix.upper()} files can run code when loaded) and is refused; {FIX}"
    )


def _header(header: object) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw


SAFETENSORS_CASES = [
    pytest.param(b"", "0 bytes, shorter than the 8-byte header length", id="empty"),
    pytest.param(b"\x80\x04\x95", "3 bytes, shorter than the 8-byte header length", id="short"),
    pytest.param(b"\x80\x04\x95\x00\x00\x00\x00\x00" + b"x" * 40,
                 "header length 9766016 does not fit the file's 48 bytes", id="pickle-renamed"),
    pytest.param((10).to_bytes(8, "little") + b"not json!!", "its header is not JSON", id="garbage-header"),
    pytest.param(_header([1, 2]), "its header is not a JSON object", id="list-header"),
    pytest.param(_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}) + b"\x00" * 4,
                 "tensor 'w' has data offsets [0, 8] outside the file's 4 data bytes", id="offsets-past-end"),
    pytest.param(_header({"w": {"dtype": "F32", "shape": [2]}}), "tensor 'w' has data offsets None outside the file's 0 data bytes",
                 id="no-offsets"),
]


@pytest.mark.parametrize("content, problem", SAFETENSORS_CASES)
def test_a_broken_safetensors_file_is_refused(setup, tmp_path, content, problem):
    adapter = copy_adapter(setup.good, tmp_path / "adapter")
    (adapter / modeling.ADAPTER_WEIGHTS).write_bytes(content)
    with pytest.raises(RegistryError) as refused:
        modeling.check_adapter_files(adapter)
    assert str(refused.value) == (
        f"adapter file {adapter / modeling.ADAPTER_WEIGHTS} is not a valid safetensors file ({problem}); {FIX}"
    )


def test_a_sound_adapter_and_a_real_safetensors_file_pass(setup, tmp_path):
    from safetensors.torch import save_file

    adapter = copy_adapter(setup.good, tmp_path / "adapter")
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(1)}, str(adapter / "extra.safetensors"))
    modeling.check_adapter_files(adapter)  # raises on failure


# --- predict --log: the traffic log in batch ------------------------------------------------------


def test_predict_log_appends_one_row_per_text_with_the_version_it_served(setup, tmp_path):
    from datetime import datetime, timezone

    from tuneloop import traffic

    log = tmp_path / "traffic.jsonl"
    before = datetime.now(timezone.utc)
    run = cli("predict", *TEXTS, "--json", "--log", str(log), "--config", str(setup.config))
    after = datetime.now(timezone.utc)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    window = traffic.read_window(log)
    labels, scores, _ = evaluation.predict_scored(setup.good, TEXTS, "cpu")
    assert window.skipped.total == 0
    assert [row.request_id for row in window.rows] == [row["request_id"] for row in printed]
    assert len({row.request_id for row in window.rows}) == len(TEXTS)
    assert all(re.fullmatch(r"[0-9a-f]{32}", row.request_id) for row in window.rows)
    assert [(row.model, row.model_version, row.text, row.prediction) for row in window.rows] == [
        ("test-model", "1", text, label) for text, label in zip(TEXTS, labels)]  # the champion alias, resolved
    assert [row.score for row in window.rows] == pytest.approx(scores, abs=1e-6)
    assert [row["score"] for row in printed] == [round(row.score, 4) for row in window.rows]
    # one batch: one time and the batch's mean milliseconds per row on every row
    assert len({row.time for row in window.rows}) == 1 and before <= window.rows[0].time <= after
    assert len({row.latency_ms for row in window.rows}) == 1 and window.rows[0].latency_ms > 0
    again = cli("predict", "my card was declined", "--version", "1", "--log", str(log), "--config", str(setup.config))
    assert again.returncode == 0, again.stderr
    assert [row.text for row in traffic.read_window(log).rows] == TEXTS + ["my card was declined"]


def test_logged_predictions_take_feedback_by_request_id(setup, tmp_path):
    from tuneloop import feedback, traffic

    log = tmp_path / "traffic.jsonl"
    assert cli("predict", *TEXTS[:3], "--log", str(log), "--config", str(setup.config)).returncode == 0
    rows = traffic.read_window(log).rows
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,label\n{rows[2].request_id},{synthetic.LABELS[0]}\n{rows[0].request_id},{synthetic.LABELS[1]}\n")
    run = cli("feedback", "add", str(labels), "--log", str(log), "--config", str(setup.config))
    assert run.returncode == 0, run.stderr
    frame = feedback.labelled_rows(log)
    assert frame[["request_id", "text", "label", "model_version"]].values.tolist() == [
        [rows[2].request_id, TEXTS[2], synthetic.LABELS[0], "1"], [rows[0].request_id, TEXTS[0], synthetic.LABELS[1], "1"]]


@pytest.mark.parametrize("name, texts, message", [
    ("traffic.csv", ["hello"], "error: DataError: traffic log 'LOG' is not a .jsonl file; name it e.g. traffic.jsonl"),
    ("traffic.jsonl", ["hello", "x" * 100_001], "error: DataError: text 2 is 100,001 characters, over the limit of 100,000, "
     "so the traffic log cannot hold it; fix it, or predict without --log"),
    ("traffic.jsonl", [b"caf\xe9"], "error: DataError: text 1 holds a lone surrogate, which is not valid Unicode, so the "
     "traffic log cannot hold it; fix it, or predict without --log"),
])
def test_predict_log_refuses_before_predicting_and_writes_nothing(setup, tmp_path, name, texts, message):
    log = tmp_path / name
    run = subprocess.run([TUNELOOP, "predict", *texts, "--log", str(log), "--config", str(setup.config)],
                         capture_output=True, timeout=600)
    run = subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())
    assert one_error_line(run) == message.replace("LOG", str(log))
    assert not log.exists()
