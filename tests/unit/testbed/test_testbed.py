"""The embedded testbed: a deterministic, valid world; a tokenizer with the split kaft and lm-eval rely on; built-in
binding heads that do what they claim; and (slow) a pretrained model that meets the acceptance targets."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from kaft.prompts import LETTERS, answer_text, few_shot_prompt
from kaft.testbed import config as tbc
from kaft.testbed import world as tbw

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def world():
    return tbw.build_world({})


@pytest.fixture(scope="module")
def tok(world):
    from kaft.testbed.tokenizer import build_tokenizer

    return build_tokenizer(world)


# ----------------------------------------------------------------------------------------------- config
def test_yaml_mirrors_defaults():
    assert yaml.safe_load((ROOT / "conf/testbed/default.yaml").read_text()) == tbc.DEFAULT_CONFIG


def test_unknown_keys_are_refused():
    with pytest.raises(tbc.WorldConfigError, match="world.n_countrys"):
        tbc.resolve_config({"world": {"n_countrys": 3}})
    with pytest.raises(tbc.WorldConfigError, match="model.binding.lettres"):
        tbc.resolve_config({"model": {"binding": {"lettres": 4}}})


def test_impossible_world_says_what_to_change():
    with pytest.raises(tbc.WorldConfigError, match="n_countries"):
        tbw.generate({"world": {"n_countries": 10}})
    with pytest.raises(tbc.WorldConfigError, match="n_people"):
        tbw.generate({"world": {"n_test_ood": 500}})
    with pytest.raises(tbc.WorldConfigError, match=r"test_ood_mix: unknown kinds \['contradict'\]"):
        tbw.generate({"world": {"test_ood_mix": {"known": 1, "contradict": 1}}})
    with pytest.raises(tbc.WorldConfigError, match="train_mix: shares must be >= 0"):
        tbw.generate({"world": {"train_mix": {"known": 0}}})
    with pytest.raises(tbc.WorldConfigError, match="max_unseen_per_entity"):
        tbw.generate({"world": {"test_id_mix": {"unseen": 1}, "max_unseen_per_entity": 1}})


# ----------------------------------------------------------------------------------------------- world
def test_deterministic_and_seeded():
    t0 = time.time()
    a = tbw.generate({})
    assert time.time() - t0 < 2.0  # "well under a second" on an idle core; CI machines are slower
    b = tbw.generate({})
    c = tbw.generate({"seed": 1})
    for name in a.splits():
        assert [it.to_dict() for it in a.split(name)] == [it.to_dict() for it in b.split(name)]
        assert [it.to_dict() for it in a.split(name)] != [it.to_dict() for it in c.split(name)]
    assert a.corpus() == b.corpus() and a.corpus() != c.corpus()


def test_splits_sizes_and_mix(world):
    assert world.splits() == ["train", "test_id", "test_ood"]
    kinds = {name: Counter(it.meta["kind"] for it in world.split(name)) for name in world.splits()}
    assert kinds["train"] == {"known": 70, "latent": 70, "unseen": 20, "contradict": 40}
    assert kinds["test_id"] == {"known": 160, "latent": 160, "unseen": 80}
    assert kinds["test_ood"] == {"known": 100, "latent": 100}
    with pytest.raises(KeyError, match="choose one of"):
        world.split("dev")


def test_ids_unique_and_stable(world):
    ids = [it.id for name in world.splits() for it in world.split(name)]
    assert len(ids) == len(set(ids))
    assert all(i.startswith(("tb-train-", "tb-test_id-", "tb-test_ood-")) for i in ids)


def test_items_are_valid(world):
    for name in world.splits():
        for it in world.split(name):
            assert len(it.options) == 4 == len(set(it.options)) and 0 <= it.answer < 4
            assert set(it.meta) == {"kind", "relation", "entity"} and it.domain and it.subject
            rel, ent = it.meta["relation"], it.meta["entity"]
            assert ent in it.question and set(it.options) <= set(world.pools[rel])
            mem, gold = world.memorised(ent, rel), it.options[it.answer]
            if it.meta["kind"] in ("known", "latent"):
                assert gold == mem and world.fact(ent, rel).freq == (
                    "frequent" if it.meta["kind"] == "known" else "rare"
                )
            elif it.meta["kind"] == "unseen":
                assert mem is None and gold == world.fact(ent, rel).value
            else:
                assert it.meta["kind"] == "contradict" and mem in it.options and gold != mem
    assert {it.domain for it in world.split("test_ood")} == {"biography"}


def test_words_are_unique_made_up_tokens(world):
    words = [e for side in world.entities.values() for e in side] + [v for p in world.pools.values() for v in p]
    assert len(words) == len(set(words)) and all(w.isalpha() and w[0].isupper() for w in words)
    assert not {w.lower() for w in words} & {c.lower() for c in LETTERS}


def test_corpus_never_states_unseen_facts_nor_quizzes_split_items(world):
    text = "\n".join(world.corpus())
    repeats, rare = world.config["world"]["repeats"], world.config["world"]["latent_repeats"]
    for f in world.facts:
        rel = world.relations[f.relation]
        said = [t.format(e=f.entity, v=f.value) for t in rel.sentences]
        if f.freq == "never":
            for t in (*rel.sentences, rel.qa):
                assert t.format(e=f.entity, v=f.value) not in text
        elif f.freq == "rare":  # stated in exactly latent_repeats paragraphs, as plain sentences only
            assert sum(any(s in p for s in said) for p in world.paragraphs if p.startswith(f.entity + " ")) == rare
            assert rel.qa.format(e=f.entity, v=f.value) not in text
        elif f.role == "train":
            assert (
                sum(
                    any(s in p for s in said) or rel.qa.format(e=f.entity, v=f.value) in p
                    for p in world.paragraphs
                    if p.startswith(f.entity + " ")
                )
                == repeats
            )
    mc = "\n".join(world.mc_docs)
    for name in world.splits():
        for it in world.split(name):
            assert it.question not in mc
    assert all(d.rstrip()[-2:] in {answer_text(i) for i in range(4)} for d in world.mc_docs)


def test_data_source_reads_the_world(tmp_path):
    from kaft.data import load_items

    items = load_items(
        {"source": "testbed", "split": "test_ood"}, domain="geography", config={"testbed": {}}, cache_dir=str(tmp_path)
    )
    assert len(items) == 200 and {it.meta["kind"] for it in items} == {"known", "latent"}
    seed1 = load_items({"source": "testbed", "split": "test_ood"}, config={"testbed": {"seed": 1}}, cache_dir="x")
    assert [it.to_dict() for it in seed1] == [it.to_dict() for it in tbw.build_world({"seed": 1}).split("test_ood")]


# ----------------------------------------------------------------------------------------------- the plugin
def test_plugin_registers_through_the_entry_point():
    """kaft never imports kaft.testbed; asking a registry for "testbed" imports the plugin (setup.cfg)."""
    from kaft import data, modeling
    from kaft.diagnostics import DIAGNOSTICS

    assert "testbed" in data.SOURCES.names() and "testbed" in modeling.SOURCES.names()
    assert "testbed" in DIAGNOSTICS.names()
    with pytest.raises(tbc.WorldConfigError, match="world.n_countrys"):
        list(data.SOURCES.get("testbed")(split="train", config={"testbed": {"world": {"n_countrys": 3}}}))


def test_nothing_in_kaft_imports_the_testbed():
    import ast

    for path in sorted((ROOT / "kaft").rglob("*.py")):
        if "testbed" in path.relative_to(ROOT / "kaft").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.startswith("kaft.testbed")], f"{path} imports {names}"


def test_model_source_keeps_the_cache_key(monkeypatch, tmp_path):
    """The model identity is the configured testbed section + VERSION, as before the plugin (pinned: changing it
    orphans every built model and every cached stage of every testbed job)."""
    from kaft import modeling
    from kaft.testbed import plugin

    built = []
    monkeypatch.setattr(plugin, "build_model", lambda cfg, root: built.append((cfg, root)) or tmp_path)
    testbed = yaml.safe_load((ROOT / "conf/testbed/default.yaml").read_text())
    path, identity = modeling.resolve({"source": "testbed"}, "cache-root", {"testbed": testbed, "seed": 3})
    assert (path, identity) == (str(tmp_path), "ce28e8a022c62784192a") and built == [(testbed, "cache-root")]
    from kaft.testbed.model import VERSION, model_key

    assert VERSION == "3" and model_key({}) == "ccf2a38133ce7c786537"


def test_a_new_key_at_its_default_changes_no_model_key(monkeypatch):
    """A testbed key added with a default that reproduces the old world (config.NEW_KEYS) leaves the model's build
    key and identity as they were while it holds that default, and enters both once set."""
    from kaft import modeling
    from kaft.testbed import config as tbc
    from kaft.testbed import model as tbm

    def ident(section):
        return modeling.resolve({"source": "testbed"}, "c", {"testbed": section}, build=False)[1]

    testbed = yaml.safe_load((ROOT / "conf/testbed/default.yaml").read_text())  # what a job passes: the whole yaml
    before_build, before_id = tbm.model_key(testbed), ident(testbed)
    monkeypatch.setitem(tbc.DEFAULT_CONFIG["world"], "new_knob", 0.0)
    monkeypatch.setattr(tbc, "NEW_KEYS", {**tbc.NEW_KEYS, "world.new_knob": 0.0})
    at_default = {**testbed, "world": {**testbed["world"], "new_knob": 0.0}}
    assert (tbm.model_key(at_default), ident(at_default)) == (before_build, before_id)
    set_ = {**testbed, "world": {**testbed["world"], "new_knob": 0.5}}
    assert tbm.model_key(set_) != before_build and ident(set_) != before_id


def test_diagnostic_finds_the_planted_contradictions():
    from kaft.diagnostics import DIAGNOSTICS
    from kaft.items import MCItem

    def item(i, kind):
        return MCItem(id=str(i), question="q", options=["a", "b"], answer=0, meta={"kind": kind} if kind else {})

    items = [item(0, "contradict"), item(1, "known"), item(2, "contradict"), item(3, "latent"), item(4, "known")]
    scores, subsets = [0.1, 0.9, 0.6, 0.5, 0.6], [0, 1, 1, 1, 0]
    diag = DIAGNOSTICS.get("testbed")
    det = diag.compute(scores, items, subsets)
    assert det == {
        "mean_by_kind": {"contradict": 0.35, "known": 0.75, "latent": 0.5},
        "auroc_contradict": (3 + 1 + 0.5) / 6,
        "contradict_in_lowest_subset": 0.5,
        "lowest_subset_precision": 0.5,  # subset 0 holds items 0 (contradict) and 4 (known)
    }
    assert (
        diag.headline({"auroc_contradict": 0.98561, "contradict_in_lowest_subset": 0.95})
        == "  auroc(contradict)=0.986  contradict in lowest subset=0.950"
    )
    assert diag.headline({"mean": 0.5}) == ""
    assert diag.compute(scores, [item(i, None) for i in range(5)], subsets) == {}
    rest = [1, 3, 4]
    no_contradict = diag.compute([scores[i] for i in rest], [items[i] for i in rest], [subsets[i] for i in rest])
    assert set(no_contradict) == {"mean_by_kind"}


# ----------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_letters_and_split(world, tok, tmp_path):
    from transformers import AutoTokenizer

    from kaft.testbed.tokenizer import letter_ids

    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    train = world.split("train")
    for t in (tok, tok2):
        for i, c in enumerate("ABCD"):
            ids = t(answer_text(i), add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and t.decode(ids).strip() == c
        assert letter_ids(t, 4) == [t.convert_tokens_to_ids(c) for c in "ABCD"]
        for it in train[:20] + world.split("test_ood")[:5]:
            shots = [(s.question, s.options, s.answer) for s in train[-3:]]
            for prompt in (
                few_shot_prompt([], it.question, it.options, "geography"),
                few_shot_prompt(shots, it.question, it.options, it.domain),
            ):
                p = t(prompt)["input_ids"]
                assert t.unk_token_id not in p and p[0] == t.bos_token_id
                assert (
                    t(prompt + answer_text(it.answer))["input_ids"]
                    == p + t(answer_text(it.answer), add_special_tokens=False)["input_ids"]
                )
    tok2.padding_side = "left"
    batch = tok2(["Question: x", "Answer:"], padding=True)["input_ids"]
    assert batch[1][0] == tok2.pad_token_id


# ----------------------------------------------------------------------------------------------- binding heads
@pytest.mark.slow
def test_binding_heads_bind_and_stay_fixed(world, tok):
    """At initialisation (no training): head P links each option value to its letter, and if the code of the gold
    value is put where the model recalls it (after "?"), "Answer:" puts the most weight on the gold letter."""
    import torch
    from transformers import LlamaForCausalLM

    from kaft.testbed.binding import binding_layout, install_binding_heads
    from kaft.testbed.model import llama_config

    cfg = tbc.resolve_config({})
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(cfg["model"], tok)).eval()
    model.config._attn_implementation = "eager"
    restore = install_binding_heads(model, tok, world, cfg["model"]["binding"], 0)
    lay = binding_layout(cfg["model"]["binding"])
    C, c = lay["C"], lay["c"]
    hits = 0
    items = world.split("test_id")[:8]
    for it in items:
        enc = tok(few_shot_prompt([], it.question, it.options, "geography"), return_tensors="pt")
        toks = tok.convert_ids_to_tokens(enc["input_ids"][0])
        q = toks.index("?")
        code = model.get_output_embeddings().weight[tok.convert_tokens_to_ids(it.options[it.answer]), C : C + c]

        def inject(mod, args, kwargs, q=q, code=code):
            h = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).clone()
            h[0, q, C : C + c] += 0.5 * code.detach()
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": h}
            return (h, *args[1:]), kwargs

        handle = model.model.layers[-2].register_forward_pre_hook(inject, with_kwargs=True)
        with torch.no_grad():
            out = model(**enc, output_attentions=True)
        handle.remove()
        p_att = out.attentions[0][0, 0]
        for o in it.options:  # each option value looks at the letter it stands under
            j = toks.index(o)
            assert toks[j - 2] in "ABCD" and int(p_att[j].argmax()) == j - 2 and float(p_att[j, j - 2]) > 0.5
        m_att = out.attentions[-1][0, 0, -1]
        gold_pos = [j for j, t in enumerate(toks) if t == it.options[it.answer]]
        hits += float(m_att[gold_pos].sum()) > 0.5
    assert hits >= 7
    # restore() undoes any optimiser step on the fixed entries
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(1.0)
        model.get_input_embeddings().weight.add_(1.0)
    before = model.get_input_embeddings().weight[:, lay["F"] :].clone()
    restore()
    assert torch.equal(model.get_input_embeddings().weight[:, lay["F"] :], before)
    assert float(model.get_input_embeddings().weight[:, 0].detach().min()) == cfg["model"]["binding"]["bias"]


def test_bad_model_config_is_refused(world, tok):
    from kaft.testbed.model import llama_config

    with pytest.raises(tbc.WorldConfigError, match="head_dim 64"):
        llama_config({**tbc.DEFAULT_CONFIG["model"], "hidden_size": 96}, tok)


# ----------------------------------------------------------------------------------------------- slow: the model
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default build (about a minute); shared with the rest of the session when KAFT_CACHE_DIR is set."""
    from kaft.testbed.model import build_model

    cache = os.environ.get("KAFT_CACHE_DIR") or str(tmp_path_factory.mktemp("kaft_cache"))
    t0 = time.time()
    path = build_model({}, cache, progress=False)
    return path, cache, time.time() - t0


@pytest.mark.slow
@pytest.mark.testbed
def test_build_is_cached_and_loadable(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaft.testbed.model import build_model

    path, cache, _ = built
    t0 = time.time()
    assert build_model({}, cache, progress=False) == path and time.time() - t0 < 5
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.head_dim == 64 and len(tok) == model.config.vocab_size
    assert (path / "testbed.json").exists() and (path / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.testbed
def test_pretrained_model_meets_targets(built):
    """Acceptance on whatever CPU runs this: the targets of kaft.testbed.report.targets (release calibrated, known
    facts known, 3-shot no worse than 0-shot), and the design checks behind them: latent facts between known and
    never-seen ones, never-seen ones at chance, room for fine-tuning, contradictions detectable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaft.testbed.report import measure, readout, targets

    path, _, _ = built
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    world, binding = tbw.build_world({}), tbc.DEFAULT_CONFIG["model"]["binding"]
    res = measure(world, model, tok)
    res["readout"] = ro = readout(world, model, tok, binding)
    missed = [t for t in targets(res, binding["release_accuracy"]) if not t["ok"]]
    assert not missed, missed
    full, pooled = ro["acc0_full"], res["pooled"]
    assert full["test_id"]["unseen"] <= full["test_id"]["latent"] <= full["test_id"]["known"]
    assert full["test_id"]["latent"] >= 0.6 and ro["gain"] < binding["m_gain"]
    assert 0.5 <= res["acc0"]["test_id"]["known"] <= 0.9  # the released readout leaves room to fine-tune
    # never-seen facts at chance, pooled over splits (100 items: +-0.1 is 2.3 standard errors)
    assert abs(pooled["acc"]["unseen"] - 0.25) <= 0.1 and abs(pooled["acc0"]["unseen"] - 0.25) <= 0.1
    assert res["auroc_contradict"] >= 0.9 and res["contradict_picks_memorised"] >= 0.7


@pytest.mark.slow
@pytest.mark.testbed
def test_avx2_build_meets_targets(tmp_path):
    """The same targets, and the default job's, for a model built and run under PyTorch's AVX2 kernels in fp32
    (``ATEN_CPU_CAPABILITY=avx2``, a fresh process and cache): an AVX-512 machine cannot hide an AVX2 failure.
    Where torch does not run AVX-512 kernels, the default build above is that build and this one is skipped."""
    import torch

    from kaft.testbed.matrix import cell

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("torch does not dispatch to AVX-512 kernels here: the default build is this build")
    c = cell(0, "fp32", "avx2", tmp_path / "cache")
    assert c["built_with"] == "AVX2"
    missed = [t for t in c["targets"] if not t["ok"]]
    assert not missed, missed
