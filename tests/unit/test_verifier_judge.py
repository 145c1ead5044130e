"""The verifier config group and SMA's LLM judge: verdicts parsed analytically from strings, the prompt is App. A.2's
(Figs. 10/11) with the item filled in, bad settings are one line, every conf/verifier/*.yaml is its schema, and the
judge runs end to end on the tiny test model (unparseable outputs discarded and counted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_model, make_tokenizer
from omegaconf import OmegaConf

from kaft import fields
from kaft.items import FreeFormItem
from kaft.verifiers import VERIFIERS, VerifierError, make_verifier, no_verdicts, parse_verdict, validate
from kaft.verifiers.judge import JudgeSettings, judge_prompt, standard_answer
from kaft.verifiers.judge_prompts import JUDGE_PROMPT_EN, JUDGE_PROMPT_ZH

CONF = Path(__file__).resolve().parents[2] / "conf"
ITEM = FreeFormItem(id="z", question="What is the capital of Zorvia ?", answer="Belmora", aliases=("Belmor",))


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (" According to the standard answer, it is Belmora. [Correct]", True),
        (" The candidate contradicts the standard answer. [Incorrect]", False),
        ("[incorrect] and more", False),
        ("分析……【正确】", True),
        ("候选答案没有回答问题。【错误】", False),
        # the first verdict counts: a judge that runs on writes the next example's
        (" fine. [Correct]\n\n[Question]: x\n[Evaluation]: no. [Incorrect]", True),
        (" [ Incorrect ] ", False),
        ("Correct", None),  # no brackets: not the paper's verdict form
        ("the answer is right", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_judge_prompt_is_sma_fig_11_with_the_item_filled_in():
    p = judge_prompt(ITEM, " Belmora\nQuestion: more", "en")
    assert p.startswith("Given a question and its corresponding standard answer, evaluate whether the candidate")
    assert p.count("[Evaluation]:") == 6  # five examples, then the one to judge
    assert p.endswith(
        "[Question]: What is the capital of Zorvia ?\n\n[Standard Answer]: Belmora / Belmor\n\n"
        "[Candidate Answer]: Belmora\n\n[Evaluation]:"
    )
    assert "[Correct]" in JUDGE_PROMPT_EN and "Hattie Winston" in JUDGE_PROMPT_EN
    zh = judge_prompt(ITEM, "Belmora", "zh")
    assert zh.startswith("给定一个问题以及对应的参考答案") and zh.endswith("【候选答案】：Belmora\n\n【评价】：")
    assert JUDGE_PROMPT_ZH.count("【评价】：") == 6
    sentence = FreeFormItem(id="s", question="q ?", answer="Belmora", response="The capital of Zorvia is Belmora.")
    assert standard_answer(sentence) == "The capital of Zorvia is Belmora."


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "exact", "model": "x"}, "verifier.model is not a verifier setting"),
        ({"name": "llm_judge", "languag": "en"}, "did you mean verifier.language?"),
        ({"name": "llm_judge", "language": "fr"}, "verifier.language must be one of ['en', 'zh'], got 'fr'"),
        ({"name": "llm_judge", "max_new_tokens": 0}, "verifier.max_new_tokens must be an integer >= 1"),
        ({"name": "oracle"}, "oracle"),
    ],
)
def test_bad_verifier_settings_are_one_line(cfg, message):
    with pytest.raises(VerifierError, match=None) as e:
        validate(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("path", sorted((CONF / "verifier").glob("*.yaml")), ids=lambda p: p.stem)
def test_verifier_yaml_is_its_schema(path):
    raw = OmegaConf.to_container(OmegaConf.load(path))
    cls = VERIFIERS.get(raw.pop("name"))
    assert path.stem == cls.name
    assert raw == fields.defaults_of(cls.Settings)  # every key, at the schema's default
    assert all(fields.help_of(cls.Settings).values())
    validate({"name": cls.name, **raw})


def test_llm_judge_runs_on_the_tiny_model_and_counts_unparseable_verdicts(one_thread):
    words = JUDGE_PROMPT_EN.replace("[", " [ ").replace("]", " ] ").split() + ["Belmora", "Zorvia"]
    tok = make_tokenizer(words)
    model = make_model(len(tok))
    judge = make_verifier({"name": "llm_judge", "max_new_tokens": 6, "batch_size": 2})
    assert judge.needs_model and isinstance(judge.s, JudgeSettings)
    calls = []
    judge.bind(lambda: calls.append(1) or (model, tok))
    responses = [["Belmora", "Tarn", "Quill"], ["x"]]
    verdicts = judge.judge([ITEM, ITEM], responses)
    assert [len(v) for v in verdicts] == [3, 1] and all(v in (True, False, None) for per in verdicts for v in per)
    assert judge.discarded == no_verdicts(verdicts)
    raw = judge.outputs([ITEM], [["Belmora"]])  # greedy: the same output for the same prompt
    assert [parse_verdict(o) for o in raw[0]] == [verdicts[0][0]]
    assert calls == [1]  # the job's model is loaded once, on first use
    assert judge.judge([ITEM], [[]]) == [[]]
