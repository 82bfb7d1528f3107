"""Vendi, PRDC and the copying similarity against published edge cases and independent brute-force computations."""

import itertools

import numpy as np
import pytest

from taxabench.metrics.metric_copying import nearest_similarity
from taxabench.metrics.metric_prdc import prdc
from taxabench.metrics.metric_vendi import vendi_score


def vendi_by_definition(x: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K the n x n cosine-similarity matrix (Friedman & Dieng, eq. 1)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(x @ x.T / len(x))
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def test_vendi_edge_cases_and_definition():
    rng = np.random.default_rng(0)
    point = rng.normal(size=16)
    assert vendi_score(np.tile(point, (7, 1))) == pytest.approx(1.0)  # identical images: one distinct look
    assert vendi_score(np.eye(5, 16) * 3.0) == pytest.approx(5.0)  # n orthogonal images: n
    assert vendi_score(np.eye(40, 40)[:40] @ np.ones((40, 8))) == pytest.approx(1.0)
    many = rng.normal(size=(60, 8))  # n > d: decomposed through the d x d matrix
    few = rng.normal(size=(6, 32))  # n < d: through the n x n one
    for x in (many, few):
        assert vendi_score(x) == pytest.approx(vendi_by_definition(x), rel=1e-9)


def prdc_by_loops(real, fake, k):
    """Naeem et al.'s definitions written out image by image (their reference code uses strict '<'). One distance
    function for radii and comparisons, so a point exactly on a radius stays on it."""
    def dist(a, b):
        return float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))))

    def radius(points, i):
        return sorted(dist(points[i], p) for p in points)[k]

    real_r = [radius(real, i) for i in range(len(real))]
    fake_r = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(dist(f, r) < real_r[i] for i, r in enumerate(real)) for f in fake])
    recall = np.mean([any(dist(r, f) < fake_r[j] for j, f in enumerate(fake)) for r in real])
    density = np.mean([sum(dist(f, r) < real_r[i] for i, r in enumerate(real)) for f in fake]) / k
    coverage = np.mean([min(dist(r, f) for f in fake) < real_r[i] for i, r in enumerate(real)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_matches_the_definitions_and_its_edge_cases():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 6)), rng.normal(0.5, 1.2, size=(30, 6))
    assert prdc(real, fake, 5) == pytest.approx(prdc_by_loops(real, fake, 5), rel=1e-12)
    same = prdc(real, real.copy(), 5)  # identical sets
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(prdc_by_loops(real, real, 5)["density"])
    swapped = prdc(fake, real, 5)  # precision and recall trade places when the sets do
    forward = prdc(real, fake, 5)
    assert swapped["precision"] == forward["recall"] and swapped["recall"] == forward["precision"]
    far = prdc(real, fake + 100.0, 5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_in_chunks_equals_prdc_from_whole_matrices(monkeypatch):
    """Sets too large for their distance matrices are computed in chunks of rows: the same numbers."""
    import taxabench.metrics.metric_prdc as module

    rng = np.random.default_rng(4)
    real, fake, weights = rng.normal(size=(50, 5)), rng.normal(size=(45, 5)), rng.integers(1, 4, 45).astype(float)
    whole = prdc(real, fake, 5, None, weights)
    monkeypatch.setattr(module, "MAX_MATRIX", 0)
    monkeypatch.setattr(module, "CHUNK", 7)
    assert prdc(real, fake, 5, None, weights) == pytest.approx(whole, rel=1e-12)


def test_prdc_bootstrap_replicates_are_prdc_of_each_resample():
    from taxabench.metrics.metric_prdc import prdc_bootstrap

    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(24, 4))
    real_unit, fake_unit = np.repeat(np.arange(6), 5), np.repeat(np.arange(6), 4)
    counts = rng.multinomial(6, np.full(6, 1 / 6), size=4)
    replicates = prdc_bootstrap(real, fake, real_unit, fake_unit, counts, 3)
    for b, count in enumerate(counts):
        rw, fw = count[real_unit], count[fake_unit]
        expected = prdc(real[rw > 0], fake[fw > 0], 3, rw[rw > 0], fw[fw > 0])
        for quantity, value in expected.items():
            assert replicates[quantity][b] == pytest.approx(100 * value, rel=1e-12)


def test_weighted_prdc_counts_each_image_its_weight_times():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
    plain = prdc(real, fake, 3)
    assert prdc(real, fake, 3, np.full(30, 2.0), np.full(25, 3.0)) == pytest.approx(plain, rel=1e-12)
    weights = rng.integers(1, 4, size=25).astype(float)
    weighted = prdc(real, fake, 3, None, weights)
    inside = [any(np.linalg.norm(f - r) < sorted(np.linalg.norm(real - r, axis=1))[3] for r in real) for f in fake]
    assert weighted["precision"] == pytest.approx(np.dot(weights, inside) / weights.sum())


def test_nearest_similarity_is_the_best_cosine():
    rng = np.random.default_rng(3)
    x, ref = rng.normal(size=(9, 5)), rng.normal(size=(13, 5))
    expected = [max(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for b in ref) for a in x]
    assert nearest_similarity(x, ref) == pytest.approx(expected, rel=1e-12)
    assert nearest_similarity(ref[:4] * 2.5, ref) == pytest.approx(np.ones(4))
    assert list(itertools.islice(nearest_similarity(x[:0], ref), 1)) == []


@pytest.mark.parametrize("chunked", [False, True])
def test_prdc_equals_the_prdc_package(monkeypatch, chunked):
    """Against Naeem et al.'s own implementation (`pip install prdc`, in the dev extra), on both of our code paths."""
    import taxabench.metrics.metric_prdc as metric_prdc

    reference = pytest.importorskip("prdc")
    if chunked:
        monkeypatch.setattr(metric_prdc, "MAX_MATRIX", 0)
        monkeypatch.setattr(metric_prdc, "CHUNK", 7)
    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(45, 8))
    for k in (1, 5):
        expected = reference.compute_prdc(real_features=real, fake_features=generated, nearest_k=k)
        assert prdc(real, generated, k) == pytest.approx(expected, rel=1e-12)


def test_vendi_equals_the_vendi_score_package():
    """Against Friedman & Dieng's implementation (`pip install vendi-score`, in the dev extra): `score_X` with its
    default row normalisation is the cosine kernel used here; both the n x n and the d x d eigenproblems."""
    vendi = pytest.importorskip("vendi_score.vendi")
    rng = np.random.default_rng(1)
    for n, d in ((12, 32), (40, 6)):
        features = rng.normal(size=(n, d)) + 0.5
        assert vendi_score(features) == pytest.approx(vendi.score_X(features), rel=1e-9)
