"""Question similarities for ILP's third cause, internal conflicts in the SFT data (seeds/002 §3.2.3, App. C.2).

ILP "detect[s] such conflicts by computing semantic similarity between sample pairs. If [sim ≥ θ], the pair is treated
as potentially conflicting" (§3.2.3); App. C.2 names the similarity a Sentence-BERT model. The extraction lost θ, so
kaft makes it a setting (``diagnosis.causes.similarity_threshold``, see :mod:`kaft.diagnosis.causes`), and the
similarity is a registered component a user can swap:

* ``exact``     -- the same question after case folding and whitespace collapsing (similarity 1 or 0): annotation
  noise in its plainest form, the same question with two labels; no threshold below 1 changes it;
* ``tfidf``     -- cosine of TF-IDF vectors of the questions' word unigrams and bigrams (smoothed idf, l2 rows, as
  scikit-learn's ``TfidfVectorizer`` defaults), fitted on the training questions themselves; numpy + scipy only, so
  it always works offline;
* ``embedding`` -- cosine of a local sentence-embedding model's vectors (ILP's Sentence-BERT reading); only when
  ``sentence-transformers`` is installed (kaft does not depend on it) -- else a one-line error naming what to
  install. The model is ``diagnosis.causes.embedding_model`` (a local path or a cached hub name).

Each returns, per question, the indexes of the *other* questions at or above the threshold (:meth:`neighbours`);
comparisons run in row blocks so a large training set never holds an n x n matrix.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from kaft.errors import ConfigError
from kaft.registry import Registry

BLOCK = 1024  # rows compared at once (a BLOCK x n dense block)
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_question(q: str) -> str:
    """What ``exact`` compares: case-folded, runs of whitespace as one space, ends stripped."""
    return " ".join(str(q).casefold().split())


class Similarity(Protocol):
    name: str

    def neighbours(self, questions: Sequence[str], threshold: float) -> list[list[int]]:
        """Per question, the indexes of the other questions whose similarity to it is >= ``threshold``."""


SIMILARITIES: Registry[type] = Registry("question similarity")


def cosine_neighbours(vectors, threshold: float, block: int = BLOCK) -> list[list[int]]:
    """Neighbours by cosine of l2-normalised rows (a dense array or a scipy sparse matrix), ``block`` rows at once;
    a tiny tolerance keeps a pair of identical questions (cosine 1 up to rounding) at a threshold of 1."""
    n = vectors.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        sims = sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)
        for r, row in enumerate(sims):
            i = start + r
            out[i] = [int(j) for j in np.flatnonzero(row >= threshold - 1e-9) if j != i]
    return out


@SIMILARITIES.register("exact")
class ExactMatch:
    """The same question text (normalised by :func:`normalize_question`): similarity 1, else 0."""

    name = "exact"

    def __init__(self, **_):
        pass

    def neighbours(self, questions: Sequence[str], threshold: float) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(normalize_question(q), []).append(i)
        keys = [normalize_question(q) for q in questions]
        return [[j for j in groups[k] if j != i] for i, k in enumerate(keys)]


def tokens(q: str) -> list[str]:
    """Word unigrams and bigrams of a case-folded question."""
    words = _WORD.findall(str(q).casefold())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def tfidf_matrix(questions: Sequence[str]):
    """The questions' TF-IDF rows (raw term counts x smoothed idf ln((1+n)/(1+df)) + 1, each row l2-normalised) as a
    scipy CSR matrix."""
    from scipy import sparse

    docs = [tokens(q) for q in questions]
    vocab: dict[str, int] = {}
    df: dict[int, int] = {}
    rows, cols, vals = [], [], []
    for i, doc in enumerate(docs):
        counts: dict[int, int] = {}
        for t in doc:
            j = vocab.setdefault(t, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        for j, c in counts.items():
            df[j] = df.get(j, 0) + 1
            rows.append(i)
            cols.append(j)
            vals.append(float(c))
    n = len(docs)
    idf = np.array([math.log((1 + n) / (1 + df[j])) + 1.0 for j in range(len(vocab))])
    m = sparse.csr_matrix((vals, (rows, cols)), shape=(n, max(len(vocab), 1)))
    m = m.multiply(idf[np.newaxis, : m.shape[1]] if len(vocab) else 1.0).tocsr()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.diags(1.0 / norms) @ m


def tfidf_similarity(a: str, b: str, corpus: Sequence[str] = ()) -> float:
    """The ``tfidf`` cosine of two questions, idf fitted on ``corpus`` plus both (for tests and for choosing θ)."""
    m = tfidf_matrix([*corpus, a, b])
    return float((m[-2] @ m[-1].T).toarray()[0, 0])


@SIMILARITIES.register("tfidf")
class TfidfCosine:
    """Cosine of TF-IDF vectors of word unigrams + bigrams, idf fitted on the compared questions."""

    name = "tfidf"

    def __init__(self, **_):
        pass

    def neighbours(self, questions: Sequence[str], threshold: float) -> list[list[int]]:
        if not questions:
            return []
        return cosine_neighbours(tfidf_matrix(questions), threshold)


EMBEDDING_PACKAGE = "sentence-transformers"


def check_embedding_installed() -> None:
    """The one-line error when ``embedding`` is chosen without its package (raised at config check time)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError(
            "diagnosis.causes.similarity=embedding needs the sentence-transformers package: "
            f"pip install {EMBEDDING_PACKAGE} (or choose similarity=tfidf or exact)"
        )


@SIMILARITIES.register("embedding")
class EmbeddingCosine:
    """Cosine of a local sentence-embedding model's vectors (ILP App. C.2: Sentence-BERT)."""

    name = "embedding"

    def __init__(self, model: str | None = None, **_):
        check_embedding_installed()
        if not model:
            raise ConfigError("diagnosis.causes.similarity=embedding needs diagnosis.causes.embedding_model (a path)")
        self.model = model

    def neighbours(self, questions: Sequence[str], threshold: float) -> list[list[int]]:
        from sentence_transformers import SentenceTransformer  # optional: checked in __init__

        enc = SentenceTransformer(self.model, local_files_only=True)
        vecs = np.asarray(enc.encode(list(questions), normalize_embeddings=True), dtype=np.float32)
        return cosine_neighbours(vecs, threshold)


def make_similarity(name: str, model: str | None = None) -> Similarity:
    """The registered similarity ``name`` (an unknown name is the registry's one-line error)."""
    return SIMILARITIES.get(name)(model=model)


__all__ = [
    "SIMILARITIES",
    "Similarity",
    "check_embedding_installed",
    "cosine_neighbours",
    "make_similarity",
    "normalize_question",
    "tfidf_matrix",
    "tfidf_similarity",
    "tokens",
]
