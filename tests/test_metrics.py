import numpy as np
import pytest
from sklearn import metrics as skm

from stmem_jax import metrics


@pytest.mark.parametrize("seed", range(3))
def test_single_label_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 300)
    probs = rng.dirichlet(np.ones(5), 300)
    probs[:50] = np.round(probs[:50], 1) + 0.05  # ties
    probs /= probs.sum(1, keepdims=True)
    predicted = probs.argmax(1)
    out = metrics.classification_metrics(labels, probs, False, list("abcde"))
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert out["f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert out["loss"] == pytest.approx(skm.log_loss(labels, probs, labels=range(5)))
    assert out["absent_classes"] == [] and out["num_examples"] == 300


def test_macro_f1_counts_the_classes_in_labels_or_predictions_like_scikit_learn():
    labels = np.array([0, 0, 1, 1, 3])
    predicted = np.array([0, 1, 1, 4, 3])  # class 2 nowhere, class 4 only predicted
    ours = metrics.macro_f1(metrics.one_hot(labels, 5), metrics.one_hot(predicted, 5))
    assert ours == pytest.approx(skm.f1_score(labels, predicted, average="macro"))


@pytest.mark.parametrize("seed", range(3))
def test_multi_label_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((200, 6)) < 0.3).astype(np.float32)
    scores = np.clip(0.4 * targets + 0.8 * rng.random((200, 6)), 0, 1)
    out = metrics.classification_metrics(targets, scores, True, list("abcdef"))
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(targets, scores, average="macro"))
    assert out["f1"] == pytest.approx(skm.f1_score(targets, scores >= 0.5, average="macro"))
    assert out["loss"] == pytest.approx(np.mean([skm.log_loss(targets[:, k], scores[:, k], labels=[0, 1])
                                                 for k in range(6)]))
    for k in range(6):
        assert metrics.binary_auroc(targets[:, k], scores[:, k]) == pytest.approx(
            skm.roc_auc_score(targets[:, k], scores[:, k]))


def test_absent_classes_are_listed_and_left_out_of_the_auroc():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 2, 3], 100)  # class 1 absent
    probs = rng.dirichlet(np.ones(4), 100)
    out = metrics.classification_metrics(labels, probs, False, ["w", "x", "y", "z"])
    assert out["absent_classes"] == ["x"] and out["per_class_auroc"]["x"] is None
    present = [0, 2, 3]
    expected = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in present])
    assert out["auroc"] == pytest.approx(expected)


def test_f_max_on_a_worked_example():
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)
    scores = np.array([[0.9, 0.2, 0.0], [0.6, 0.7, 0.3], [0.1, 0.1, 0.1]])
    # t in (0.3, 0.6]: predictions {0}, {0, 1}, {} -> precision (1 + 1/2) / 2, recall (1 + 1/2) / 2 -> F 0.75;
    # t in (0.2, 0.3]: adds class 2 for sample 2 -> precision (1 + 2/3) / 2, recall 1 -> F 0.909
    assert metrics.f_max(targets, scores) == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert metrics.f_max(targets, targets.astype(float)) == 1.0
