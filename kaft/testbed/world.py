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

``internal_pairs`` (default 0: none) adds to ``train`` that many *twins* of known items -- the same question, a
different gold -- of kind ``internal`` (ILP's internal conflicts; :func:`~kaft.testbed.worldgen.plant_internal_pairs`).
:mod:`kaft.testbed.knobs` then applies issue 24's knobs (all off by default): ``contradict_keep`` (how many planted
contradictions still contradict) and ``test_on_train_frac`` (a share of ``test_id`` that re-asks training facts in
other words).

This module is the world's API (:class:`World`, :func:`generate`, :func:`build_world`); what the world is written
in (relations, templates, made-up words) lives in :mod:`kaft.testbed.templates` and the draws that fill it in
:mod:`kaft.testbed.worldgen`. Their public names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kaft.cache import make_key
from kaft.items import MCItem
from kaft.prompts import few_shot_prompt
from kaft.testbed.config import resolve_config
from kaft.testbed.knobs import apply_knobs
from kaft.testbed.templates import INTROS, RELATIONS, Names, Relation
from kaft.testbed.worldgen import (
    KINDS,
    Fact,
    assign_roles,
    check_mixes,
    draw_options,
    entity_paragraphs,
    mc_documents,
    plant_internal_pairs,
    seeded_rng,
    split_items,
)

__all__ = ["INTROS", "KINDS", "RELATIONS", "Fact", "Relation", "World", "build_world", "generate"]


@dataclass
class World:
    config: dict
    relations: dict[str, Relation]
    entities: dict[str, list[str]]  # "in"/"ood" -> names
    pools: dict[str, list[str]]  # relation -> value words
    facts: list[Fact]
    paragraphs: list[str]  # plain-text documents stating the frequent facts
    mc_docs: list[str]  # multiple-choice documents about format facts only
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
        rng = seeded_rng(int(self.config["seed"]), "format-items")
        facts = [f for f in self.facts if f.role == "format"]
        out = []
        for f in rng.sample(facts, min(n, len(facts))):
            rel = self.relations[f.relation]
            opts, ans = draw_options(rng, self.pools[f.relation], f.value)
            out.append(
                MCItem(
                    id=f"tb-format-{f.entity.lower()}-{f.relation}",
                    question=rel.question.format(e=f.entity),
                    options=opts,
                    answer=ans,
                    subject=f.relation,
                    domain=self.domain_name(rel.domain),
                    meta={"kind": "format", "relation": f.relation, "entity": f.entity},
                )
            )
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


def generate(cfg: Mapping | None = None) -> World:
    """Build the world for a (partial) testbed config; pure and deterministic (each part draws from its own seeded
    stream, so changing one part's draws leaves the others as they were)."""
    full = resolve_config(cfg)
    seed, w = int(full["seed"]), full["world"]
    check_mixes(w)
    names = Names(seeded_rng(seed, "names"))
    entities = {
        "in": [names.new("country") for _ in range(int(w["n_countries"]))],
        "ood": [names.new("person") for _ in range(int(w["n_people"]))],
    }
    pools = {r.name: [names.new("value") for _ in range(int(w["pool_size"]))] for r in RELATIONS}
    rels = {r.name: r for r in RELATIONS}
    vrng = seeded_rng(seed, "values")
    truth = {(e, r.name): vrng.choice(pools[r.name]) for r in RELATIONS for e in entities[r.domain]}
    roles = assign_roles(w, truth, rels, seeded_rng(seed, "assign"))
    freq = {"unseen": "never", "latent": "rare"}
    facts = [Fact(e, r, truth[(e, r)], freq.get(roles[(e, r)][1], "frequent"), *roles[(e, r)]) for (e, r) in truth]
    domain_of = {"in": str(w["domain"]), "ood": str(w["ood_domain"])}
    return World(
        config=full,
        relations=rels,
        entities=entities,
        pools=pools,
        facts=facts,
        paragraphs=entity_paragraphs(facts, entities, rels, w, seeded_rng(seed, "paragraphs")),
        mc_docs=mc_documents(facts, pools, rels, domain_of, w, seeded_rng(seed, "mc")),
        _splits=apply_knobs(
            plant_internal_pairs(
                split_items(facts, pools, rels, domain_of, seeded_rng(seed, "splits")),
                pools,
                w,
                seeded_rng(seed, "internal-pairs"),
            ),
            facts,
            pools,
            rels,
            w,
            seed,
        ),
    )


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
