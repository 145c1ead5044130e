"""How the testbed world is drawn: its facts' roles, frequencies and values, the corpus stating them and the
multiple-choice split items asking about them (see :mod:`kaft.testbed.world` for what each part means).

Apart from :mod:`kaft.testbed.world` so that the :class:`~kaft.testbed.world.World` API and :func:`generate
<kaft.testbed.world.generate>` read on one page; these are the pieces ``generate`` calls, each drawing from its own
seeded stream (:func:`seeded_rng`), so changing one part's draws leaves the others as they were. Nothing here is
memoised or reads a file: the world stays a pure function of its config.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from kaft.items import MCItem
from kaft.prompts import answer_text, few_shot_prompt
from kaft.testbed.config import WorldConfigError
from kaft.testbed.templates import INTROS, Relation


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    value: str  # the true value (what the corpus states when frequent)
    freq: str  # "frequent" | "rare" | "never"
    role: str  # "train" | "test_id" | "test_ood" | "format"
    kind: str  # "known" | "latent" | "unseen" | "contradict" (split facts); "format" for format facts


def seeded_rng(seed: int, *salt: str) -> random.Random:
    return random.Random("|".join(["kaft-testbed", str(seed), *salt]))  # str seeds hash stably (sha512)


def _counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    total = sum(float(v) for v in mix.values())
    raw = {k: n * float(v) / total for k, v in mix.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def draw_options(rng: random.Random, pool: list[str], gold: str, must: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """4 options: gold, the ``must`` distractors, random others from the pool; shuffled."""
    rest = [v for v in pool if v != gold and v not in must]
    opts = [gold, *must, *rng.sample(rest, 3 - len(must))]
    rng.shuffle(opts)
    return opts, opts.index(gold)


KINDS = ("known", "latent", "unseen", "contradict")


def assign_roles(
    w: Mapping, truth: Mapping, rels: Mapping[str, Relation], rng: random.Random
) -> dict[tuple[str, str], tuple[str, str]]:
    """``(entity, relation) -> (role, kind)`` for every fact: the split items by the configured mixes, the rest
    ``("format", "format")``. Never-seen facts are capped per entity (``max_unseen_per_entity``) so that every
    entity itself stays known."""
    n_rel = {side: sum(r.domain == side for r in rels.values()) for side in ("in", "ood")}
    counts = {
        "train": _counts(int(w["n_train"]), w["train_mix"]),
        "test_id": _counts(int(w["n_test_id"]), w["test_id_mix"]),
        "test_ood": _counts(int(w["n_test_ood"]), w["test_ood_mix"]),
    }
    roles: dict[tuple[str, str], tuple[str, str]] = {}
    for side, split_names, what in (("in", ("train", "test_id"), "n_countries"), ("ood", ("test_ood",), "n_people")):
        pool = [k for k in truth if rels[k[1]].domain == side]
        rng.shuffle(pool)
        need = sum(sum(counts[s].values()) for s in split_names)
        if need > len(pool):
            raise WorldConfigError(
                f"testbed world: {' + '.join(split_names)} need {need} facts but {what}="
                f"{w[what]} x {n_rel[side]} relations give {len(pool)}; raise {what} or "
                f"shrink the splits"
            )
        wanted = [(s, kind) for s in split_names for kind, n in counts[s].items() for _ in range(n)]
        per_entity: dict[str, int] = {}
        free = list(pool)
        for split, kind in sorted(wanted, key=lambda sk: sk[1] != "unseen"):  # the capped kind picks first
            if kind == "unseen":
                k = next((k for k in free if per_entity.get(k[0], 0) < int(w["max_unseen_per_entity"])), None)
                if k is None:
                    raise WorldConfigError(
                        f"testbed world: not enough {what} for the unseen facts; raise {what} or max_unseen_per_entity"
                    )
                per_entity[k[0]] = per_entity.get(k[0], 0) + 1
                free.remove(k)
            else:
                k = free.pop(0)
            roles[k] = (split, kind)
        for k in free:
            roles[k] = ("format", "format")
    return roles


def check_mixes(w: Mapping) -> None:
    if int(w["pool_size"]) < 4:
        raise WorldConfigError("testbed world.pool_size must be >= 4 (4 distinct options per question)")
    mixes = {
        "train": ("train_mix", KINDS),
        "test_id": ("test_id_mix", KINDS[:3]),
        "test_ood": ("test_ood_mix", ("known", "latent")),
    }
    for key, allowed in mixes.values():
        mix = w[key]
        if not isinstance(mix, Mapping) or not mix:
            raise WorldConfigError(f"testbed world.{key} must be a non-empty mapping kind -> share, got {mix!r}")
        unknown = set(mix) - set(allowed)
        if unknown:
            raise WorldConfigError(f"testbed world.{key}: unknown kinds {sorted(unknown)} (allowed: {list(allowed)})")
        if any(not float(v) >= 0 for v in mix.values()) or not sum(float(v) for v in mix.values()) > 0:
            raise WorldConfigError(f"testbed world.{key}: shares must be >= 0 and not all 0, got {dict(mix)}")


def split_items(
    facts: list[Fact],
    pools: Mapping[str, list[str]],
    rels: Mapping[str, Relation],
    domain_of: Mapping[str, str],
    rng: random.Random,
) -> dict[str, list[MCItem]]:
    """The split facts as 4-option items; a ``contradict`` item's gold is another value, the memorised one a
    distractor."""
    splits: dict[str, list[MCItem]] = {"train": [], "test_id": [], "test_ood": []}
    for f in facts:
        if f.role == "format":
            continue
        pool = pools[f.relation]
        if f.kind == "contradict":
            gold = rng.choice([v for v in pool if v != f.value])
            opts, ans = draw_options(rng, pool, gold, must=(f.value,))
        else:
            opts, ans = draw_options(rng, pool, f.value)
        rel = rels[f.relation]
        splits[f.role].append(
            MCItem(
                id=f"tb-{f.role}-{f.entity.lower()}-{f.relation}",
                question=rel.question.format(e=f.entity),
                options=opts,
                answer=ans,
                subject=f.relation,
                domain=domain_of[rel.domain],
                meta={"kind": f.kind, "relation": f.relation, "entity": f.entity},
            )
        )
    for name in splits:
        rng.shuffle(splits[name])
    return splits


def entity_paragraphs(
    facts: list[Fact], entities: Mapping[str, list[str]], rels: Mapping[str, Relation], w: Mapping, rng: random.Random
) -> list[str]:
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
        sents += [
            (rels[f.relation].qa if rng.random() < qa_frac[f.freq] else rng.choice(rels[f.relation].sentences)).format(
                e=e, v=f.value
            )
            for f in fs
        ]
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


def mc_documents(
    facts: list[Fact],
    pools: Mapping[str, list[str]],
    rels: Mapping[str, Relation],
    domain_of: Mapping[str, str],
    w: Mapping,
    rng: random.Random,
) -> list[str]:
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
            opts, ans = draw_options(rng, pools[f.relation], f.value)
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


def plant_internal_pairs(
    splits: dict[str, list[MCItem]], pools: Mapping[str, list[str]], w: Mapping, rng: random.Random
) -> dict[str, list[MCItem]]:
    """ILP's third cause planted (seeds/002 §3.2.3: "semantically similar inputs ... associated with contradictory
    labels"): ``internal_pairs`` training items of kind ``known`` each get a *twin* -- the same question, freshly
    drawn options, a different gold (the original's gold one of its distractors) -- inserted at a random place in
    ``train``. The twin has kind ``internal``; both carry ``meta["pair"]`` = the other's id. The train split grows
    by ``internal_pairs`` items (``n_train`` counts the original facts). At 0 (the default) nothing is drawn and the
    splits are returned as they are: the default world is byte-identical to the one before the knob."""
    n = w.get("internal_pairs", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise WorldConfigError(f"testbed world.internal_pairs must be an integer >= 0, got {n!r}")
    if n == 0:
        return splits
    train = list(splits["train"])
    known = [i for i, it in enumerate(train) if it.meta.get("kind") == "known"]
    if n > len(known):
        raise WorldConfigError(
            f"testbed world.internal_pairs={n} but the train split has {len(known)} known items to pair; "
            "lower it or raise n_train / train_mix.known"
        )
    twins = []
    for i in sorted(rng.sample(known, n)):
        orig = train[i]
        gold = orig.options[orig.answer]
        twin_gold = rng.choice([v for v in pools[orig.meta["relation"]] if v != gold])
        opts, ans = draw_options(rng, pools[orig.meta["relation"]], twin_gold, must=(gold,))
        twin_id = f"{orig.id}-twin"
        meta = {"kind": "internal", "relation": orig.meta["relation"], "entity": orig.meta["entity"], "pair": orig.id}
        twins.append(MCItem(twin_id, orig.question, opts, ans, orig.subject, orig.domain, meta))
        train[i] = MCItem(orig.id, orig.question, orig.options, orig.answer, orig.subject, orig.domain,
                          {**orig.meta, "pair": twin_id})  # fmt: skip
    for twin in twins:
        train.insert(rng.randint(0, len(train)), twin)
    return {**splits, "train": train}
