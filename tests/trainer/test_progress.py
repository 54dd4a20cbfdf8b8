"""Long stages keep talking: a bar that redraws while a slow batch runs, and a heartbeat."""

from __future__ import annotations

import logging
import re
import time

from trainer.progress import heartbeat, progress_bar


def test_bar_prints_lines_with_rate_and_eta_while_a_batch_is_slow(capsys):
    with progress_bar(64, "embedding items", every_s=0.2) as bar:
        bar.update(32)
        time.sleep(1.0)  # one slow batch: the bar must not go quiet
        bar.update(32)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    waiting = [line for line in lines if "32/64" in line]
    assert len(waiting) >= 3, lines  # redrawn about every 0.2 s while nothing moved
    assert re.search(r"embedding items: 64/64 items \[.*<.*, .*item/s\]", lines[-1]), lines[-1]
    assert "\r" not in "".join(lines)  # a log file gets lines, not carriage returns


def test_heartbeat_logs_while_the_block_runs(caplog):
    log = logging.getLogger("test.heartbeat")
    with caplog.at_level(logging.INFO, logger="test.heartbeat"):
        with heartbeat("exporting", log, every_s=0.2):
            time.sleep(0.9)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "exporting…"
    assert sum("still running" in m for m in messages) >= 2
    assert messages[-1].startswith("exporting: done in")
