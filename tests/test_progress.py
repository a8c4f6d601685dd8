"""Progress bars: into a log (not a terminal) a long job writes a few updates, not one per step."""
import io
import time

from recsys.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _updates(stream) -> int:
    for _ in progress_bar(range(40), file=stream, desc="job"):
        time.sleep(0.01)                     # 0.4 s: several of tqdm's default 0.1 s intervals
    return stream.getvalue().count("\r")


def test_a_log_gets_the_start_and_the_end_only():
    log = io.StringIO()
    n = _updates(log)
    assert n <= 2, log.getvalue()
    assert "40/40" in log.getvalue() and "█" not in log.getvalue()          # final state, ASCII bar


def test_a_terminal_keeps_the_live_bar():
    assert _updates(_Terminal()) >= 3


def test_explicit_arguments_win():
    log = io.StringIO()
    for _ in progress_bar(range(40), file=log, mininterval=0.0, miniters=1):
        time.sleep(0.002)
    assert log.getvalue().count("\r") >= 20
