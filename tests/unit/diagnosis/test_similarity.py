"""Question similarities of internal conflicts (kaft.diagnosis.similarity): exact, tfidf, and the embedding one's
one-line error when sentence-transformers is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kaft.diagnosis import similarity as S
from kaft.errors import ConfigError

QS = [
    "What is the capital of Zorvia?",
    "what is the  capital of zorvia?",
    "What is the currency of Zorvia?",
    "What is the capital of Belmora?",
    "Tell me: what is the capital of Zorvia?",
]


def test_registry_names():
    assert {"exact", "tfidf", "embedding"} <= set(S.SIMILARITIES.names())


def test_exact_matches_after_case_and_space_folding():
    assert S.make_similarity("exact").neighbours(QS, 1.0) == [[1], [0], [], [], []]


def test_tfidf_cosine_by_hand():
    # two documents, no shared term: cosine 0; a document with itself: 1
    m = S.tfidf_matrix(["a b", "c d", "a b"])
    sims = (m @ m.T).toarray()
    assert np.allclose(np.diag(sims), 1.0) and sims[0, 1] == 0.0 and np.isclose(sims[0, 2], 1.0)
    # idf = ln((1+n)/(1+df)) + 1 over unigrams + bigrams; "x" in both, "y" only in the first
    m = S.tfidf_matrix(["x y", "x"]).toarray()
    idf_x, idf_y = 1.0, np.log(3 / 2) + 1
    v = np.array([idf_x, idf_y, idf_y])  # x, y, "x y"
    assert np.isclose(m[0] @ m[1], idf_x / np.linalg.norm(v))


def test_tfidf_threshold_separates_near_duplicates_from_same_entity_questions():
    sim = S.make_similarity("tfidf")
    assert sim.neighbours(QS, 0.9) == [[1], [0], [], [], []]
    near = sim.neighbours(QS, 0.6)
    assert 4 in near[0] and 2 not in near[0]  # the rephrased one is nearer than another relation of the entity
    assert S.tfidf_similarity(QS[0], QS[2], QS) < 0.6
    assert sim.neighbours([], 0.9) == []


def test_cosine_neighbours_in_blocks_equal_one_block():
    m = S.tfidf_matrix(QS * 3)
    assert S.cosine_neighbours(m, 0.5, block=2) == S.cosine_neighbours(m, 0.5)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is not None, reason="it is installed")
def test_embedding_without_its_package_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        S.make_similarity("embedding", "some/model")
    msg = str(e.value)
    assert "pip install sentence-transformers" in msg and "\n" not in msg


def test_unknown_similarity():
    with pytest.raises(ConfigError, match="unknown question similarity 'bm25'"):
        S.make_similarity("bm25")
