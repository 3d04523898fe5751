"""Loss and accuracy curves as a PNG (matplotlib's object API: no display, no
pyplot, whose import alone is a visible part of a short run)."""
from __future__ import annotations

import threading

from jaxbp._files import atomic_write


def preload():
    """Import matplotlib in a background thread while the run starts and trains
    (the host mostly waits on the device then), so that the curves written at
    the end do not wait for the import."""
    threading.Thread(target=_import_matplotlib, daemon=True, name="jaxbp-import-matplotlib").start()


def _import_matplotlib():
    try:
        import matplotlib.backends.backend_agg  # noqa: F401  (what savefig renders with)
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass  # figure() raises it, where it is the caller's error


def plot_curves(history, path, title=""):
    """Write the figure of :func:`figure` to ``path`` atomically."""
    save(figure(history, title), path)


def save(fig, path):
    """``fig`` as a PNG at ``path``, atomically (a crash leaves the old file or none)."""
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"), "wb")


def figure(history, title=""):
    """Loss (train, test) and test accuracy per epoch; epochs on integer ticks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    losses = [r[k] for r in history for k in ("train_loss", "test_loss") if r[k] > 0]
    # A log scale where the loss spans a decade or more; within one, its labels
    # would read "2.65×10⁰".
    wide = bool(losses) and max(losses) >= 10 * min(losses)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log" if wide else "linear", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="%", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(epochs)) == 1:   # one epoch: one tick, not 0.945…1.065
            ax.set(xlim=(epochs[0] - 1, epochs[0] + 1), xticks=[epochs[0]])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(confusion, classes, title=""):
    """The confusion matrix (rows: true class, columns: predicted), counts written in."""
    from matplotlib.figure import Figure

    k = len(classes)
    fig = Figure(figsize=(1.5 + 0.6 * k, 1 + 0.6 * k))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    ax.tick_params(axis="x", labelrotation=45)
    top = confusion.max() if confusion.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > top / 2 else "black")
    fig.tight_layout()
    return fig
