"""Image-level classification scores: accuracy per class and the confusion matrix, for the B-scan classifier on
real held-out scans and on synthetic scans of requested classes.

The counts come from ignite's :class:`~ignite.metrics.ConfusionMatrix` (rows: true class, columns: predicted);
a class's accuracy is the share of its images predicted as it (the row's diagonal over the row's sum: recall),
the overall accuracy the diagonal over all images. A class with no image has accuracy None.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from ignite.metrics import ConfusionMatrix

__all__ = ["confusion_report", "confusion_markdown"]


def confusion_report(predictions: torch.Tensor | Sequence[int], targets: torch.Tensor | Sequence[int],
                     names: Sequence[str], requested: Sequence[int] | None = None) -> dict[str, Any]:
    """Accuracy per class, overall and the confusion matrix of predicted vs true class ids.

    Args:
        predictions: ``(N,)`` predicted ids or ``(N, K)`` scores (argmax taken).
        targets: ``(N,)`` true (for a synthetic set: requested) class ids in ``0 .. K-1``.
        names: class names in id order (``K`` of them).
        requested: the classes to report per class (default: those present in ``targets``).

    Returns:
        ``{"num_images", "accuracy", "per_class": {name: {"id", "images", "accuracy", "predicted": {name: n}}},
        "confusion": K x K list (rows true, columns predicted), "classes": names, "definition"}``.

    Raises:
        ValueError: when the counts differ, or an id is outside ``0 .. K-1`` (names the id).
    """
    k = len(names)
    pred = torch.as_tensor(predictions)
    pred = pred.argmax(1) if pred.ndim == 2 else pred.long().view(-1)
    true = torch.as_tensor(targets).long().view(-1)
    if pred.shape[0] != true.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {true.shape[0]} targets")
    for what, ids in (("predicted", pred), ("target", true)):
        bad = ids[(ids < 0) | (ids >= k)]
        if bad.numel():
            raise ValueError(f"{what} class id {int(bad[0])} outside 0..{k - 1} ({list(names)})")
    cm = ConfusionMatrix(num_classes=k)
    if true.numel():
        cm.update((torch.nn.functional.one_hot(pred, k).float(), true))
    mat = cm.confusion_matrix.long()
    total = int(mat.sum())
    present = sorted(set(true.tolist())) if requested is None else [int(c) for c in requested]
    per_class = {}
    for c in present:
        row = mat[c]
        n = int(row.sum())
        per_class[names[c]] = {"id": c, "images": n, "accuracy": float(row[c]) / n if n else None,
                               "predicted": {names[j]: int(row[j]) for j in range(k) if int(row[j])}}
    return {"num_images": total, "accuracy": float(mat.diagonal().sum()) / total if total else None,
            "per_class": per_class, "confusion": mat.tolist(), "classes": list(names),
            "definition": ("confusion[i][j]: images of true (requested) class i predicted as j; a class's accuracy is "
                           "its diagonal over its row (recall); accuracy is the diagonal over all images")}


def confusion_markdown(report: dict[str, Any], title: str = "Classifier") -> str:
    """A report of :func:`confusion_report` as markdown: accuracy per class, then the confusion matrix."""
    names = report["classes"]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"## {title}", "", f"Accuracy {f(report['accuracy'])} over {report['num_images']} images.", "",
             "| class | images | accuracy |", "|---|---:|---:|"]
    lines += [f"| {n} | {r['images']} | {f(r['accuracy'])} |" for n, r in report["per_class"].items()]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(report["confusion"])]
    return "\n".join(lines) + "\n"
