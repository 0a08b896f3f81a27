"""What every report plot does last: lay out, write the PNG at the reports' resolution, free the figure."""

from __future__ import annotations


def save_figure(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
