"""What the benchmark scripts share."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


class PeakResidentMemory:
    """The peak resident memory of this process while the ``with`` block runs, above what it
    held when the block began (sampled from /proc every few milliseconds): the block's own
    cost, which a process-lifetime ``ru_maxrss`` hides behind an earlier, larger peak."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import os

        self.interval_s = interval_s
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.baseline_mb = self.peak_mb = 0.0

    def _resident_mb(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page_mb

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, self._resident_mb())

    def __enter__(self) -> "PeakResidentMemory":
        import threading

        self.baseline_mb = self.peak_mb = self._resident_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._resident_mb())

    @property
    def added_mb(self) -> float:
        return self.peak_mb - self.baseline_mb
