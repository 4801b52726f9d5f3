"""Run outputs for humans: TensorBoard scalars, a metrics.jsonl log, and a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path


class Reporter:
    """Writes only on the main process (pass enabled=False elsewhere)."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.out_dir = out_dir
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        with (self.out_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")

    def histograms(self, step: int, values: dict) -> None:
        """TensorBoard histograms only ({tag: tensor}); too big for metrics.jsonl."""
        if self.enabled:
            for tag, tensor in values.items():
                self.writer.add_histogram(tag, tensor.detach().float().cpu(), step)

    def text(self, tag: str, body: str, step: int) -> None:
        if self.enabled:
            self.writer.add_text(tag, body, step)

    def plot_losses(self, train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> Path | None:
        """loss.png: train loss per step and eval loss at each eval."""
        if not self.enabled or not train:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
        if evals:
            ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per trained token (nats)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
