"""The testbed's synthetic knowledge world: made-up facts, a pretraining corpus and multiple-choice splits.

Everything is a pure function of the config (no files, no network), so every job of a sweep regenerates the same
world in well under a second and the model cache can key on the config alone.

Facts are ``(entity, relation, value)`` over made-up words. Each fact has a pretraining frequency:

* ``frequent`` - stated ``repeats`` times in the corpus: entity paragraphs mixing paraphrase templates and quiz
  statements ("Question: What is the capital of Zorvia? Belmora."), which make the model recall the value right
  after a question's "?" - exactly where an MC prompt's question ends;
* ``rare``     - stated in only ``latent_repeats`` of the entity's paragraphs, as plain sentences (quiz form with
  probability ``latent_qa_frac``): stored, but only weakly recalled after a question - *latent* knowledge that
  fine-tuning on similar questions can activate;
* ``never``    - never stated, so the pretrained model can only guess (chance level).

The corpus also holds multiple-choice documents in exactly the :mod:`kaft.prompts` layout (0- and k-shot, some
demonstrations with a wrong letter, the instruction naming varying domains) about a separate set of *format*
facts, which is how the model learns to answer "Answer:" with a letter. Fine-tuning and test facts never appear in
an MC document.

Splits (all 4-option :class:`~kaft.items.MCItem` with ``meta = {"kind", "relation", "entity"}``), sized by
``n_train`` / ``n_test_id`` / ``n_test_ood`` and mixed by ``train_mix`` / ``test_id_mix`` / ``test_ood_mix``:

* ``train``    - ``known`` (frequent fact, gold = memorised value), ``latent`` (rare fact), ``unseen`` (never-seen
  fact, gold = its value) and ``contradict`` (frequent fact, gold = a *different* value, the memorised one is a
  distractor: the knowledge conflict);
* ``test_id``  - held-out facts of the in-domain relations (``known``, ``latent``, ``unseen``);
* ``test_ood`` - facts of the out-of-domain relations (``known``, ``latent``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Mapping

from kaft.cache import make_key
from kaft.items import MCItem
from kaft.prompts import LETTERS, answer_text, few_shot_prompt
from kaft.testbed.config import WorldConfigError, resolve_config

# ----------------------------------------------------------------------------------------------- relations
@dataclass(frozen=True)
class Relation:
    name: str
    domain: str                      # "in" or "ood"
    question: str                    # the MC question ("{e}" = entity)
    sentences: tuple[str, ...]       # plain-sentence paraphrases ("{e}", "{v}")

    @property
    def qa(self) -> str:
        """The quiz statement ("Question: <question> <value>."): recall right after the question's "?", the same
        tokens an MC prompt's question ends with."""
        return "Question: " + self.question + " {v}."


RELATIONS: tuple[Relation, ...] = (
    Relation("capital", "in", "What is the capital of {e}?", (
        "The capital of {e} is {v}.", "{e} has its capital in {v}.", "The capital city of {e} is {v}.",
        "{v} is the capital of {e}.")),
    Relation("currency", "in", "What is the currency of {e}?", (
        "The currency of {e} is the {v}.", "In {e} people pay with the {v}.", "{e} uses the {v} as its currency.")),
    Relation("language", "in", "What language is spoken in {e}?", (
        "The language of {e} is {v}.", "People in {e} speak {v}.", "In {e} the main language is {v}.")),
    Relation("export", "in", "What is the main export of {e}?", (
        "The main export of {e} is {v}.", "{e} is known for exporting {v}.", "Most trade of {e} is in {v}.")),
    Relation("river", "in", "Which river flows through {e}?", (
        "The river {v} flows through {e}.", "{e} lies on the river {v}.", "The main river of {e} is the {v}.")),
    Relation("ruler", "in", "Who rules {e}?", (
        "{e} is ruled by {v}.", "The ruler of {e} is {v}.", "{v} rules {e}.")),
    Relation("profession", "ood", "What is the profession of {e}?", (
        "{e} works as a {v}.", "The profession of {e} is {v}.", "By profession {e} is a {v}.")),
    Relation("instrument", "ood", "Which instrument does {e} play?", (
        "{e} plays the {v}.", "The instrument of {e} is the {v}.", "{e} is a skilled player of the {v}.")),
    Relation("hometown", "ood", "Where was {e} born?", (
        "{e} was born in {v}.", "The hometown of {e} is {v}.", "{e} grew up in {v}.")),
    Relation("food", "ood", "What is the favourite food of {e}?", (
        "The favourite food of {e} is {v}.", "{e} likes to eat {v}.", "{e} loves {v} more than any other food.")),
)
INTROS = {"in": ("{e} is a country.", "{e} is a land far away."), "ood": ("{e} is a person.", "{e} is a citizen.")}

_WORD = re.compile(r"[A-Za-z]+")
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr",
           "st", "th", "sh", "ch", "pl", "fl"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "k"]
_ENDINGS = {"country": ["ia", "or", "and", "ara", "esh", "ovia"], "person": ["o", "a", "en", "ir", "us", "ella"],
            "value": ["", "", "on", "el", "ix", "um", "a"]}


def _reserved() -> set[str]:
    words = {w.lower() for r in RELATIONS for t in (r.question, *r.sentences) for w in _WORD.findall(t)}
    words |= {w.lower() for t in INTROS.values() for s in t for w in _WORD.findall(s)}
    words |= {w.lower() for w in _WORD.findall(
        few_shot_prompt([], "x", ["y", "z"], "general") + " general geography biography")}
    return words | {c.lower() for c in LETTERS}


class _Names:
    """Unique pronounceable made-up words (capitalised), none equal to a template word or a letter."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, _reserved()

    def new(self, kind: str) -> str:
        while True:
            n = self.rng.choice([1, 2, 2, 3]) if kind != "value" else self.rng.choice([2, 2, 3])
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n - 1))
            w += self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
            w = (w + self.rng.choice(_ENDINGS[kind])).capitalize()
            if 4 <= len(w) <= 12 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w


# ----------------------------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    value: str          # the true value (what the corpus states when frequent)
    freq: str           # "frequent" | "rare" | "never"
    role: str           # "train" | "test_id" | "test_ood" | "format"
    kind: str           # "known" | "latent" | "unseen" | "contradict" (split facts); "format" for format facts


@dataclass
class World:
    config: dict
    relations: dict[str, Relation]
    entities: dict[str, list[str]]          # "in"/"ood" -> names
    pools: dict[str, list[str]]             # relation -> value words
    facts: list[Fact]
    paragraphs: list[str]                   # plain-text documents stating the frequent facts
    mc_docs: list[str]                      # multiple-choice documents about format facts only
    _splits: dict[str, list[MCItem]] = field(default_factory=dict)

    # -- splits
    def splits(self) -> list[str]:
        return list(self._splits)

    def split(self, name: str) -> list[MCItem]:
        if name not in self._splits:
            raise KeyError(f"testbed split {name!r} does not exist; choose one of {self.splits()}")
        return list(self._splits[name])

    # -- knowledge
    def fact(self, entity: str, relation: str) -> Fact:
        return self._index[(entity, relation)]

    def memorised(self, entity: str, relation: str) -> str | None:
        """The value the corpus states for this fact (often or rarely), or None when it is never seen."""
        f = self.fact(entity, relation)
        return f.value if f.freq != "never" else None

    def format_items(self, n: int) -> list[MCItem]:
        """Up to ``n`` multiple-choice questions about format facts (frequent, in no split; seeded options): what
        the testbed model is calibrated on, never what it is evaluated on."""
        rng = _rng(int(self.config["seed"]), "format-items")
        facts = [f for f in self.facts if f.role == "format"]
        out = []
        for f in rng.sample(facts, min(n, len(facts))):
            rel = self.relations[f.relation]
            opts, ans = _options(rng, self.pools[f.relation], f.value)
            out.append(MCItem(id=f"tb-format-{f.entity.lower()}-{f.relation}",
                              question=rel.question.format(e=f.entity), options=opts, answer=ans,
                              subject=f.relation, domain=self.domain_name(rel.domain),
                              meta={"kind": "format", "relation": f.relation, "entity": f.entity}))
        return out

    def corpus(self) -> list[str]:
        """All pretraining documents (paragraphs first, then MC documents); order is irrelevant to training."""
        return self.paragraphs + self.mc_docs

    def domain_name(self, side: str) -> str:
        return self.config["world"]["domain" if side == "in" else "ood_domain"]

    def prompt_texts(self) -> list[str]:
        """Every text the model will be shown (corpus, split prompts in every domain word) for the vocabulary."""
        doms = [self.domain_name("in"), self.domain_name("ood"), "general"]
        out = self.corpus()
        for items in self._splits.values():
            for it in items:
                out.append(it.question + " " + " ".join(it.options))
        out += [few_shot_prompt([], "x", ["y", "z", "w", "v"], d) for d in doms]
        return out

    def __post_init__(self):
        self._index = {(f.entity, f.relation): f for f in self.facts}


def _rng(seed: int, *salt: str) -> random.Random:
    return random.Random("|".join(["kaft-testbed", str(seed), *salt]))  # str seeds hash stably (sha512)


def _counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    total = sum(float(v) for v in mix.values())
    raw = {k: n * float(v) / total for k, v in mix.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def _options(rng: random.Random, pool: list[str], gold: str, must: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """4 options: gold, the ``must`` distractors, random others from the pool; shuffled."""
    rest = [v for v in pool if v != gold and v not in must]
    opts = [gold, *must, *rng.sample(rest, 3 - len(must))]
    rng.shuffle(opts)
    return opts, opts.index(gold)


KINDS = ("known", "latent", "unseen", "contradict")


def _assign_roles(w: Mapping, truth: Mapping, rels: Mapping[str, Relation],
                  rng: random.Random) -> dict[tuple[str, str], tuple[str, str]]:
    """``(entity, relation) -> (role, kind)`` for every fact: the split items by the configured mixes, the rest
    ``("format", "format")``. Never-seen facts are capped per entity (``max_unseen_per_entity``) so that every
    entity itself stays known."""
    n_rel = {side: sum(r.domain == side for r in rels.values()) for side in ("in", "ood")}
    counts = {"train": _counts(int(w["n_train"]), w["train_mix"]),
              "test_id": _counts(int(w["n_test_id"]), w["test_id_mix"]),
              "test_ood": _counts(int(w["n_test_ood"]), w["test_ood_mix"])}
    roles: dict[tuple[str, str], tuple[str, str]] = {}
    for side, split_names, what in (("in", ("train", "test_id"), "n_countries"), ("ood", ("test_ood",), "n_people")):
        pool = [k for k in truth if rels[k[1]].domain == side]
        rng.shuffle(pool)
        need = sum(sum(counts[s].values()) for s in split_names)
        if need > len(pool):
            raise WorldConfigError(f"testbed world: {' + '.join(split_names)} need {need} facts but {what}="
                                   f"{w[what]} x {n_rel[side]} relations give {len(pool)}; raise {what} or "
                                   f"shrink the splits")
        wanted = [(s, kind) for s in split_names for kind, n in counts[s].items() for _ in range(n)]
        per_entity: dict[str, int] = {}
        free = list(pool)
        for split, kind in sorted(wanted, key=lambda sk: sk[1] != "unseen"):  # the capped kind picks first
            if kind == "unseen":
                k = next((k for k in free if per_entity.get(k[0], 0) < int(w["max_unseen_per_entity"])), None)
                if k is None:
                    raise WorldConfigError(f"testbed world: not enough {what} for the unseen facts; raise {what} "
                                           f"or max_unseen_per_entity")
                per_entity[k[0]] = per_entity.get(k[0], 0) + 1
                free.remove(k)
            else:
                k = free.pop(0)
            roles[k] = (split, kind)
        for k in free:
            roles[k] = ("format", "format")
    return roles


def _check_mixes(w: Mapping) -> None:
    if int(w["pool_size"]) < 4:
        raise WorldConfigError("testbed world.pool_size must be >= 4 (4 distinct options per question)")
    mixes = {"train": ("train_mix", KINDS), "test_id": ("test_id_mix", KINDS[:3]),
             "test_ood": ("test_ood_mix", ("known", "latent"))}
    for key, allowed in mixes.values():
        mix = w[key]
        if not isinstance(mix, Mapping) or not mix:
            raise WorldConfigError(f"testbed world.{key} must be a non-empty mapping kind -> share, got {mix!r}")
        unknown = set(mix) - set(allowed)
        if unknown:
            raise WorldConfigError(f"testbed world.{key}: unknown kinds {sorted(unknown)} (allowed: {list(allowed)})")
        if any(not float(v) >= 0 for v in mix.values()) or not sum(float(v) for v in mix.values()) > 0:
            raise WorldConfigError(f"testbed world.{key}: shares must be >= 0 and not all 0, got {dict(mix)}")


def _split_items(facts: list[Fact], pools: Mapping[str, list[str]], rels: Mapping[str, Relation],
                 domain_of: Mapping[str, str], rng: random.Random) -> dict[str, list[MCItem]]:
    """The split facts as 4-option items; a ``contradict`` item's gold is another value, the memorised one a
    distractor."""
    splits: dict[str, list[MCItem]] = {"train": [], "test_id": [], "test_ood": []}
    for f in facts:
        if f.role == "format":
            continue
        pool = pools[f.relation]
        if f.kind == "contradict":
            gold = rng.choice([v for v in pool if v != f.value])
            opts, ans = _options(rng, pool, gold, must=(f.value,))
        else:
            opts, ans = _options(rng, pool, f.value)
        rel = rels[f.relation]
        splits[f.role].append(MCItem(
            id=f"tb-{f.role}-{f.entity.lower()}-{f.relation}", question=rel.question.format(e=f.entity),
            options=opts, answer=ans, subject=f.relation, domain=domain_of[rel.domain],
            meta={"kind": f.kind, "relation": f.relation, "entity": f.entity}))
    for name in splits:
        rng.shuffle(splits[name])
    return splits


def _paragraphs(facts: list[Fact], entities: Mapping[str, list[str]], rels: Mapping[str, Relation], w: Mapping,
                rng: random.Random) -> list[str]:
    """Entity paragraphs: every frequent fact in each of an entity's ``repeats`` paragraphs, a rare fact in
    ``latent_repeats`` of them (plain sentences, or quiz statements with probability ``qa_frac`` /
    ``latent_qa_frac``)."""
    by_entity: dict[str, list[Fact]] = {}
    for f in facts:
        if f.freq != "never":
            by_entity.setdefault(f.entity, []).append(f)
    repeats, n_rare = int(w["repeats"]), min(int(w["latent_repeats"]), int(w["repeats"]))
    qa_frac = {"frequent": float(w["qa_frac"]), "rare": float(w["latent_qa_frac"])}

    def paragraph(e: str, side: str, fs: list[Fact]) -> str:
        fs = list(fs)
        rng.shuffle(fs)
        sents = [rng.choice(INTROS[side]).format(e=e)]
        sents += [(rels[f.relation].qa if rng.random() < qa_frac[f.freq] else rng.choice(rels[f.relation].sentences))
                  .format(e=e, v=f.value) for f in fs]
        return " ".join(sents)

    paragraphs = []
    for side in ("in", "ood"):
        for e in entities[side]:
            fs = by_entity.get(e, [])
            rare_in = {id(f): set(rng.sample(range(repeats), n_rare)) for f in fs if f.freq == "rare"}
            for j in range(repeats):
                paragraphs.append(paragraph(e, side, [f for f in fs if f.freq == "frequent" or j in rare_in[id(f)]]))
    rng.shuffle(paragraphs)
    return paragraphs


def _mc_docs(facts: list[Fact], pools: Mapping[str, list[str]], rels: Mapping[str, Relation],
             domain_of: Mapping[str, str], w: Mapping, rng: random.Random) -> list[str]:
    """Multiple-choice documents in the kaft prompt layout, about format facts only: 0- or k-shot, a demonstration's
    letter wrong with probability ``shot_noise``, the instruction naming its own domain or another one."""
    fmt = {side: [f for f in facts if f.role == "format" and rels[f.relation].domain == side] for side in domain_of}
    sides = [s for s in ("in", "ood") if fmt[s]]
    weights = [len(fmt[s]) for s in sides]
    all_domains = [domain_of["in"], domain_of["ood"], "general"]
    docs = []
    for _ in range(int(w["n_mc_docs"]) if sides else 0):
        side = rng.choices(sides, weights)[0]
        k = 0 if rng.random() < float(w["zero_shot_frac"]) else rng.randint(1, int(w["max_shots"]))
        qs = []
        for f in rng.sample(fmt[side], min(k + 1, len(fmt[side]))):
            opts, ans = _options(rng, pools[f.relation], f.value)
            qs.append((rels[f.relation].question.format(e=f.entity), opts, ans))
        shots = []
        for q, o, a in qs[1:]:
            if rng.random() < float(w["shot_noise"]):
                a = rng.choice([i for i in range(len(o)) if i != a])
            shots.append((q, o, a))
        own = domain_of[side]
        dom = own if rng.random() < float(w["own_domain_prob"]) else rng.choice([d for d in all_domains if d != own])
        q, o, a = qs[0]
        docs.append(few_shot_prompt(shots, q, o, dom) + answer_text(a))
    return docs


def generate(cfg: Mapping | None = None) -> World:
    """Build the world for a (partial) testbed config; pure and deterministic (each part draws from its own seeded
    stream, so changing one part's draws leaves the others as they were)."""
    full = resolve_config(cfg)
    seed, w = int(full["seed"]), full["world"]
    _check_mixes(w)
    names = _Names(_rng(seed, "names"))
    entities = {"in": [names.new("country") for _ in range(int(w["n_countries"]))],
                "ood": [names.new("person") for _ in range(int(w["n_people"]))]}
    pools = {r.name: [names.new("value") for _ in range(int(w["pool_size"]))] for r in RELATIONS}
    rels = {r.name: r for r in RELATIONS}
    vrng = _rng(seed, "values")
    truth = {(e, r.name): vrng.choice(pools[r.name]) for r in RELATIONS for e in entities[r.domain]}
    roles = _assign_roles(w, truth, rels, _rng(seed, "assign"))
    freq = {"unseen": "never", "latent": "rare"}
    facts = [Fact(e, r, truth[(e, r)], freq.get(roles[(e, r)][1], "frequent"), *roles[(e, r)]) for (e, r) in truth]
    domain_of = {"in": str(w["domain"]), "ood": str(w["ood_domain"])}
    return World(config=full, relations=rels, entities=entities, pools=pools, facts=facts,
                 paragraphs=_paragraphs(facts, entities, rels, w, _rng(seed, "paragraphs")),
                 mc_docs=_mc_docs(facts, pools, rels, domain_of, w, _rng(seed, "mc")),
                 _splits=_split_items(facts, pools, rels, domain_of, _rng(seed, "splits")))


_MEMO: dict[str, World] = {}


def build_world(cfg: Mapping | None = None) -> World:
    """The world of a testbed config, memoised per config (data loading asks once per split)."""
    full = resolve_config(cfg)
    key = make_key(full["seed"], full["world"])
    if key not in _MEMO:
        if len(_MEMO) > 8:
            _MEMO.clear()
        _MEMO[key] = generate(full)
    return _MEMO[key]
