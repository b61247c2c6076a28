"""Feedback while a run trains: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normbench.run import dist

log = logging.getLogger(__name__)


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Feedback from the first step: a tqdm bar on a terminal, plain log lines otherwise.

    The bar advances every step (its rate and ETA shown from the first one) and shows the
    loss and tokens/s of each log point; while it is open every log message and warning is
    written through it (tqdm.write), so that no line breaks the bar. Without a terminal a
    line is logged after the first step of the process and at every log point. A terminal
    that is gone (EIO after a hang-up) turns the bar off; it never stops the run.
    """

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.bar: tqdm | None = None
        self._redirect = contextlib.ExitStack()
        if sys.stderr.isatty() and dist.is_main():
            self._redirect.enter_context(logging_redirect_tqdm())
            logging.captureWarnings(True)
            self._redirect.callback(logging.captureWarnings, False)
            # A terminal that reports no size (a bare pty, `docker exec -t`) makes tqdm hide
            # the bar (it counts 0 rows); a fixed size then ($COLUMNS x $LINES, or 80 x 24).
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError):
                sized = False
            fixed = shutil.get_terminal_size()
            self.bar = tqdm(
                total=total,
                initial=done,
                unit="step",
                dynamic_ncols=sized,
                ncols=None if sized else fixed.columns,
                nrows=None if sized else fixed.lines,
                file=sys.stderr,
            )

    def advance(self, step: int, row: dict[str, Any] | None, eta_s: float) -> None:
        """After every step; `row` (train/loss, lr, grad_norm, tokens_per_s) is shown when
        given (at log points and after the first step of the process)."""
        if self.bar is None:
            if row is not None:
                log.info(
                    "step %d/%d | loss %.4f | lr %.2e | grad %.3f | %s tok/s | eta %s",
                    step,
                    self.total,
                    row["train/loss"],
                    row["lr"],
                    row["grad_norm"],
                    f"{row['tokens_per_s']:,.0f}",
                    _eta(eta_s),
                )
            return
        with _terminal_gone_ok():
            self.bar.update(step - self.bar.n)
            if row is not None:
                loss, tok_s = f"{row['train/loss']:.4f}", f"{row['tokens_per_s']:,.0f}"
                self.bar.set_postfix(loss=loss, tok_s=tok_s, refresh=False)
                self.bar.refresh()

    def close(self) -> None:
        with _terminal_gone_ok():
            if self.bar is not None:
                self.bar.close()
        self._redirect.close()


@contextlib.contextmanager
def _terminal_gone_ok() -> Any:
    """Writing to a terminal that is gone (EIO or EPIPE after a hang-up) is not an error."""
    try:
        yield
    except OSError:
        pass
