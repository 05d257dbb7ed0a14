"""Classification metrics in NumPy: macro AUROC, macro F1, accuracy, sample-centric F-max and the
validation loss, for single-label (class indices) and multi-label (multi-hot) targets.

AUROC is the Mann-Whitney statistic with average ranks for ties (equal to the area under the ROC
curve). Macro AUROC averages over the classes that have both positives and negatives; macro F1
over the classes that occur in the targets or the predictions (scikit-learn's default labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-7
FMAX_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def binary_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``targets``; NaN without both classes."""
    targets = np.asarray(targets).astype(bool)
    positives, negatives = int(targets.sum()), int((~targets).sum())
    if not positives or not negatives:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based average ranks
    return float((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def per_class_auroc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of every column of multi-hot ``targets`` (N, K); NaN where undefined."""
    return np.array([binary_auroc(targets[:, k], scores[:, k]) for k in range(targets.shape[1])])


def macro_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the classes with both positives and negatives."""
    values = per_class_auroc(targets, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def macro_f1(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Macro F1 of multi-hot ``predictions`` against multi-hot ``targets`` (N, K), over the classes
    that occur in either."""
    targets, predictions = np.asarray(targets).astype(bool), np.asarray(predictions).astype(bool)
    tp = (targets & predictions).sum(0)
    wrong = (targets ^ predictions).sum(0)  # false positives + false negatives
    present = (targets | predictions).any(0)
    return float(np.mean(2 * tp[present] / (2 * tp[present] + wrong[present]))) if present.any() else float("nan")


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f_max(targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray = FMAX_THRESHOLDS) -> float:
    """Sample-centric F-max (CAFA; Strodthoff et al. 2021): the best F1 over thresholds ``t`` of
    precision averaged over the samples with a score >= t and recall averaged over the samples
    with at least one positive class."""
    targets = np.asarray(targets).astype(bool)
    labelled = targets.any(1)
    best = 0.0
    for t in thresholds:
        predicted = scores >= t
        has_prediction = predicted.any(1)
        if not has_prediction.any() or not labelled.any():
            continue
        hits = (predicted & targets).sum(1)
        precision = np.mean(hits[has_prediction] / predicted[has_prediction].sum(1))
        recall = np.mean(hits[labelled] / targets[labelled].sum(1))
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def loss(labels: np.ndarray, probs: np.ndarray, multilabel: bool) -> float:
    """Cross-entropy of probabilities: categorical (class indices) or binary averaged over classes."""
    probs = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    if multilabel:
        return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


def logit_loss(labels: np.ndarray, logits: np.ndarray, multilabel: bool) -> float:
    """Cross-entropy of logits: softmax (class indices) or sigmoid binary averaged over classes, float64."""
    logits = np.asarray(logits, np.float64)
    if multilabel:
        return float(np.mean(np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))))
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, multilabel: bool,
                           classes: Sequence[str], logits: np.ndarray | None = None) -> dict:
    """Every metric of one split. Single-label: ``auroc``, ``f1``, ``accuracy`` (argmax); multi-label:
    ``auroc``, ``fmax``, ``f1`` (threshold 0.5). Also ``loss`` (the cross-entropy of ``logits`` when
    given, else of ``probs``), ``per_class_auroc`` and ``absent_classes`` (no positive example; left
    out of the AUROC)."""
    probs = np.asarray(probs, np.float64)
    targets = np.asarray(labels, np.float32) if multilabel else one_hot(labels, len(classes))
    per_class = per_class_auroc(targets, probs)
    value = loss(labels, probs, multilabel) if logits is None else logit_loss(labels, logits, multilabel)
    out = {"num_examples": int(len(probs)), "loss": value,
           "auroc": macro_auroc(targets, probs)}
    if multilabel:
        out.update(fmax=f_max(targets, probs), f1=macro_f1(targets, probs >= 0.5))
    else:
        predicted = probs.argmax(1)
        out.update(f1=macro_f1(targets, one_hot(predicted, len(classes))), accuracy=accuracy(labels, predicted))
    out["per_class_auroc"] = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, per_class)}
    out["absent_classes"] = [c for c, n in zip(classes, targets.sum(0)) if n == 0]
    return out
