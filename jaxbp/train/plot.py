"""Loss and accuracy curves as a PNG (matplotlib, no display needed)."""
from __future__ import annotations

import os


def plot_curves(history, path, title=""):
    """Write the figure of :func:`figure` to ``path`` atomically."""
    import matplotlib.pyplot as plt

    fig = figure(history, title)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def figure(history, title=""):
    """Loss (train, test) and test accuracy per epoch; epochs on integer ticks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="%", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
