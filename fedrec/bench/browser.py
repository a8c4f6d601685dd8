"""A real browser on a real dashboard: ``fedrec dashboard`` in a subprocess, Debian's headless Chromium
driven by selenium. Shared by the browser test (tests/test_dashboard.py) and ``fedrec bench browser``.

An interaction is timed from the action until Streamlit is idle again: its status widget ("Running…")
gone and no element drawn stale. Python exceptions shown on the page and the browser console's errors
and warnings (Vega-Lite logs its spec warnings there) are collected for the caller to check.
"""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

# (script runs finished, spinners showing): the app ends each script run with a <span class="fedrec-drawn">
STATE_JS = """
const marks = Array.from(document.querySelectorAll('.fedrec-drawn')).map(e => +e.dataset.run);
const spinning = document.querySelectorAll('[data-testid="stSpinner"]').length;
return [marks.length ? Math.max(...marks) : 0, spinning];
"""


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed (``make test`` installs them where it can)."""
    c, d = shutil.which("chromium"), shutil.which("chromedriver")
    return (c, d) if c and d else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardBrowser:
    """Start the dashboard on ``runs``/``indices`` and a headless Chromium window on it."""

    def __init__(self, runs: Path, indices: Path, jobs: Path | None = None, window: tuple[int, int] = (1400, 1000),
                 start_timeout: float = 90.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        paths = chromium_paths()
        if paths is None:
            raise RuntimeError("Debian chromium + chromium-driver are not installed (make test installs them)")
        self.port = free_port()
        env = None
        if jobs is not None:
            import os
            env = {**os.environ, "FEDREC_JOBS": str(jobs)}
        self.server = subprocess.Popen([sys.executable, "-m", "fedrec.cli", "dashboard", "--runs", str(runs),
                                        "--indices", str(indices), "--port", str(self.port)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.browser = None
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2)
                    break
                except OSError:
                    if self.server.poll() is not None:
                        raise RuntimeError(f"dashboard exited: {self.server.stdout.read()[-2000:]}")
                    if time.time() > deadline:
                        raise RuntimeError(f"dashboard did not start within {start_timeout:.0f} s")
                    time.sleep(0.3)
            opts = webdriver.ChromeOptions()
            opts.binary_location = paths[0]
            for a in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window[0]},{window[1]}",
                      "--disable-dev-shm-usage"):
                opts.add_argument(a)
            opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            self.browser = webdriver.Chrome(service=Service(paths[1]), options=opts)
            self.console: list[dict] = []
        except BaseException:
            self.close()
            raise

    # -- state -------------------------------------------------------------------------------------
    def body(self) -> str:
        from selenium.webdriver.common.by import By
        return self.browser.find_element(By.TAG_NAME, "body").text

    def drawn(self) -> int:
        return int(self.browser.execute_script(STATE_JS)[0])

    def selected(self, label: str) -> str:
        """The option shown in the select box ``label``."""
        from selenium.webdriver.common.by import By
        return self.browser.find_element(By.CSS_SELECTOR, f"input[aria-label^='{label}']").get_attribute("value")

    def cells(self) -> list[str]:
        """The text of every table cell on the page (st.dataframe draws on a canvas; its accessible
        grid carries the values)."""
        return self.browser.execute_script(
            "return Array.from(document.querySelectorAll('[role=gridcell]')).map(e => e.textContent)")

    def wait_idle(self, after: int = 0, timeout: float = 120.0, settle: float = 0.2) -> None:
        """Until a script run later than ``after`` has finished, no spinner shows, and nothing new
        started for ``settle`` s (a slider sends several runs)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            n, spinning = self.browser.execute_script(STATE_JS)
            if n > after and not spinning:
                time.sleep(settle)
                n2, spinning = self.browser.execute_script(STATE_JS)
                if n2 == n and not spinning:
                    return
                continue
            time.sleep(0.02)
        raise TimeoutError(f"the dashboard was still running after {timeout:.0f} s")

    def exceptions(self) -> list[str]:
        from selenium.webdriver.common.by import By
        return [e.text for e in self.browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')]

    def console_problems(self) -> list[str]:
        """Console errors and warnings since the last call (Streamlit's own info chatter left out)."""
        for rec in self.browser.get_log("browser"):
            self.console.append(rec)
        out = [f"{r['level']}: {r['message']}" for r in self.console if r["level"] in ("SEVERE", "WARNING")
               and "favicon" not in r["message"]]
        self.console = []
        return out

    # -- actions -----------------------------------------------------------------------------------
    def open(self) -> float:
        t = time.perf_counter()
        self.browser.get(f"http://127.0.0.1:{self.port}/")
        self.wait_idle()
        return time.perf_counter() - t

    def timed(self, action) -> float:
        """Seconds from ``action`` until the run it started has been drawn (the settle time excluded)."""
        before = self.drawn()
        t = time.perf_counter()
        action()
        self.wait_idle(before, settle=0.0)
        done = time.perf_counter() - t
        self.wait_idle(before)                    # then make sure nothing else was still coming
        return done

    # Each action finds its element first and times only the user's final gesture (the click, the Enter,
    # the key press): selenium's own lookups are not the dashboard's latency.
    def page(self, name: str) -> float:
        from selenium.webdriver.common.by import By

        side = self.browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]')
        label = next(e for e in side.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == name)
        return self.timed(label.click)

    def choose(self, label: str, typed: str, option_prefix: str | None = None) -> float:
        """Type into the searchable select box ``label`` and click the first option that starts with
        ``option_prefix`` (default: the typed text)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait

        want = option_prefix if option_prefix is not None else typed
        box = self.browser.find_element(By.CSS_SELECTOR, f"input[aria-label^='{label}']")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(typed)
        opt = WebDriverWait(self.browser, 30).until(lambda b: next(
            (o for o in b.find_elements(By.CSS_SELECTOR, "[role='option']") if o.text.strip().startswith(want)),
            False))
        return self.timed(opt.click)

    def type_text(self, label: str, text: str) -> float:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = self.browser.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text)
        return self.timed(lambda: box.send_keys(Keys.ENTER))

    def toggle(self, label: str) -> float:
        from selenium.webdriver.common.by import By

        el = next(e for e in self.browser.find_elements(By.CSS_SELECTOR, "label") if e.text.strip() == label)
        return self.timed(el.click)

    def slider_keys(self, label: str, presses: int) -> float:
        """Move the slider ``label`` by ``presses`` arrow-key steps (negative: left); each step is an
        interaction of its own (a rerun), the time is the last one's."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        el = self.browser.find_element(By.CSS_SELECTOR, f"input[type='range'][aria-label='{label}']")
        self.browser.execute_script("arguments[0].focus()", el)
        key = Keys.ARROW_RIGHT if presses > 0 else Keys.ARROW_LEFT
        took = 0.0
        for _ in range(abs(presses)):
            took = self.timed(lambda: el.send_keys(key))
        return took

    def click_button(self, label: str) -> float:
        from selenium.webdriver.common.by import By

        el = next(b for b in self.browser.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == label)
        return self.timed(el.click)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.browser.save_screenshot(str(path))

    def close(self) -> None:
        if self.browser is not None:
            try:
                self.browser.quit()
            except Exception:  # noqa: BLE001 - a dead browser is already closed
                pass
        self.server.terminate()
        try:
            self.server.wait(15)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
