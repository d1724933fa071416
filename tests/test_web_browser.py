"""The dashboard end to end in headless Chromium (Debian's chromium through /usr/bin/chromedriver and
selenium; nothing is downloaded): a `tinyfed run --simulate --dashboard` whose page advances its version
counter and metric chart as the run goes, shows a board whose cable is pulled as offline and then back,
still renders once the run is over; and a simulate output's curves. Every wait is on the page's DOM,
with generous timeouts. Screenshots go to build/test-artifacts/dashboard/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (make debian-packages)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "test-artifacts" / "dashboard"
#: The board the test unplugs (devices.json of a --simulate run: sim1 is sim://mps2-an386?name=run1).
VICTIM, VICTIM_SIM = "sim1", ("mps2-an386", "run1")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: Any, what: Callable[[Any], Any], timeout: float = 60) -> Any:
    """Wait on the page (polled every 0.1 s by WebDriver) until ``what`` is truthy; its value."""
    def probe(d: Any) -> Any:
        try:
            return what(d)
        except Exception:  # noqa: BLE001 - the element may be being re-rendered: ask again
            return None

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(probe)


def _js(driver: Any, code: str) -> Any:
    return driver.execute_script(code)


def _version(d: Any) -> int | None:
    text = d.find_element("id", "version").text
    return int(text) if text.isdigit() else None


def _board(d: Any, name: str) -> dict[str, Any] | None:
    return _js(d, f"""const tr = document.querySelector('tr[data-board="{name}"]');
        if (!tr) return null; const td = tr.querySelectorAll('td');
        return {{state: td[3].textContent, accepted: Number(td[11].textContent), why: td[14].textContent}};""")


class _Run:
    """`tinyfed run --simulate 4 --dashboard` in a child process; its stderr lines as they come."""

    def __init__(self, out: Path, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_unplug_run.py"), *VICTIM_SIM, "run", "--simulate", "4",
             "--model", "har_cnn", "--max-windows", "2", "--config", str(config), "--out", str(out), "--dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def line(self, prefix: str, timeout: float = 60) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: any(x.startswith(prefix) for x in self.lines), timeout), self.lines
            return next(x for x in self.lines if x.startswith(prefix))


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Run, str, Path]]:
    base = tmp_path_factory.mktemp("dashboard")
    config = base / "run.toml"
    # never at the target: the run goes on for max_seconds; a pulled board retries every half second
    config.write_text('target_accuracy = 0.99\n[limits]\nmax_seconds = 25\n'
                      '[devices]\nretries = 100\nbackoff_s = 0.5\n')
    run = _Run(base / "run", config)
    try:
        url = run.line("dashboard http://").split()[1]
        yield run, url, base / "run"
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.wait(30)


def test_live_run_advances_and_a_pulled_board_goes_offline_then_back(browser: Any, live_run: Any) -> None:
    run, url, _ = live_run
    assert url.startswith("http://127.0.0.1:")
    browser.get(url)  # before the run has written anything: the page waits for it
    v1 = _until(browser, _version, timeout=180)  # planning har_cnn first: ~12 s idle, minutes on a busy host
    points = _js(browser, "return document.getElementById('chart-metric').data[0].x.length")
    _until(browser, lambda d: (_version(d) or 0) > v1 + 1)
    assert _js(browser, "return document.getElementById('chart-metric').data[0].x.length") > points
    assert browser.find_element("id", "status").text == "running"
    browser.save_screenshot(str(ARTIFACTS / "live-run.png"))

    before = _until(browser, lambda d: _board(d, VICTIM))
    run.proc.send_signal(signal.SIGUSR1)  # pull the cable
    run.line("unplugged")
    off = _until(browser, lambda d: (b := _board(d, VICTIM)) and b["state"] == "offline" and b)
    assert "DeviceUnreachable" in off["why"] or "Link" in off["why"], off
    # the tiles re-render on every event: read the count in one step, asking again if a render intervened
    assert _until(browser, lambda d: int(d.find_element("css selector", '.tile[data-state="offline"] b').text)) >= 1
    browser.save_screenshot(str(ARTIFACTS / "board-offline.png"))
    run.proc.send_signal(signal.SIGUSR2)  # and plug it back in
    run.line("plugged in")
    back = _until(browser, lambda d: (b := _board(d, VICTIM)) and b["state"] != "offline"
                  and b["accepted"] > max(before["accepted"], off["accepted"]) and b)
    assert back["state"] in ("idle", "training", "uploading"), back
    browser.save_screenshot(str(ARTIFACTS / "board-back.png"))


def test_a_finished_run_still_renders(browser: Any, live_run: Any) -> None:
    from tinyfed.web.serve import BackgroundDashboard

    run, url, run_dir = live_run
    assert run.proc.wait(120) == 1  # stopped on max_seconds before its (unreachable) target
    # the run's own dashboard pushed the end before it stopped with the run
    _until(browser, lambda d: d.find_element("id", "status").text == "finished")
    assert "dashboard stopped" in browser.find_element("id", "title").text
    server = BackgroundDashboard([run_dir], port=0)  # as `tinyfed dashboard RUN_DIR` serves it afterwards
    try:
        browser.get(server.url)
        _until(browser, lambda d: d.find_element("id", "status").text == "finished")
        _until(browser, lambda d: len(d.find_elements("css selector", "#boards tbody tr")) == 4)
        history = (run_dir / "history.csv").read_text().splitlines()
        assert _version(browser) == int(history[-1].split(",")[0])
        assert _js(browser, "return document.getElementById('chart-metric').data[0].x.length") == len(history) - 1
        browser.save_screenshot(str(ARTIFACTS / "finished-run.png"))
    finally:
        server.stop()


def test_a_simulate_output_renders(browser: Any, tmp_path: Path) -> None:
    from tinyfed.web.serve import BackgroundDashboard

    rows = ["strategy,version,sim_time_s,accuracy,loss,bytes_down,bytes_up,bytes_total,updates_accepted,wall_s"]
    for s, speed in (("ftte", 1.0), ("fedbuff", 2.0), ("fedavg", 9.0)):
        for v in range(12):
            acc = 0.19 + (0.56 if s == "fedavg" else 0.66) * (1 - 0.7 ** v)  # fedavg stays below the target
            sent = v * 10000 * speed
            down, up = sent * 0.9, sent * 0.1
            rows.append(f"{s},{v},{v * 60 * speed:.1f},{acc:.4f},1.0,{down:.0f},{up:.0f},{sent:.0f},{v},0.1")
    (tmp_path / "history.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "study.json").write_text(json.dumps({
        "config": {"strategies": ["ftte", "fedbuff", "fedavg"], "target_accuracy": 0.8, "clients": 500},
        "results": {"ftte": {"time_to_target_s": 420.0}, "fedbuff": {"time_to_target_s": 840.0},
                    "fedavg": {"time_to_target_s": None}}}))
    server = BackgroundDashboard([tmp_path], port=0)
    try:
        browser.get(server.url)
        _until(browser, lambda d: len(d.find_elements("css selector", "#strategies tbody tr")) == 3)
        assert _js(browser, "return document.getElementById('chart-study').data.length") == 3
        assert _js(browser, "return document.getElementById('chart-bytes').data.length") == 3
        # time to target marked for the two that reach it; the target line across
        assert _js(browser, "return document.getElementById('chart-study').layout.shapes.length") == 3
        cells = browser.find_element("css selector", '#strategies tr[data-strategy="fedavg"]').text
        assert "not reached" in cells
        browser.save_screenshot(str(ARTIFACTS / "simulate-output.png"))
    finally:
        server.stop()


def test_ten_thousand_boards_stay_fluid(browser: Any, tmp_path: Path) -> None:
    """A 10,000-board run: the page counts boards per state and shows them 50 to a page."""
    import time

    from tinyfed.web.serve import BackgroundDashboard

    names = [f"w{i:05d}" for i in range(10_000)]
    events: list[dict[str, Any]] = [{"kind": "run_start", "strategy": "fedbuff", "devices": names}]
    events += [{"kind": "device_state", "device": n, "state": "idle"} for n in names]
    events += [{"kind": "dispatch", "task": i, "device": n, "version": 0} for i, n in enumerate(names[::4])]
    events += [{"kind": "device_state", "device": n, "state": "dropped", "reason": "LinkTimeout: x"}
               for n in names[1::50]]
    events += [{"kind": "evaluation", "version": 0, "metric": "accuracy", "accuracy": 0.3, "loss": 2.0},
               {"kind": "aggregation", "version": 1, "updates": 3, "weights": [0.5, 0.3, 0.2], "staleness": [0, 1, 4],
                "buffer_size": 3}]
    with open(tmp_path / "events.jsonl", "w") as f:
        for seq, ev in enumerate(events):
            f.write(json.dumps({"seq": seq, "t": 1.0, "wall": time.time(), **ev}) + "\n")
    server = BackgroundDashboard([tmp_path], port=0)
    try:
        start = time.monotonic()
        browser.get(server.url)
        _until(browser, lambda d: d.find_element("id", "page-text").text.startswith("1–50 of 10000"))
        shown = time.monotonic() - start
        assert len(browser.find_elements("css selector", "#boards tbody tr")) == 50
        assert browser.find_element("css selector", '.tile[data-state="training"] b').text == "2500"
        assert browser.find_element("css selector", '.tile[data-state="offline"] b').text == "200"
        # a newer engine's aggregation: the weights of the last buffer, one bar per update
        assert _js(browser, "return document.getElementById('chart-weights').data[0].y") == [0.5, 0.3, 0.2]
        browser.find_element("id", "next").click()
        _until(browser, lambda d: d.find_element("id", "page-text").text.startswith("51–100 of"))
        browser.find_element("css selector", '.tile[data-state="offline"]').click()
        _until(browser, lambda d: d.find_element("id", "page-text").text == "1–50 of 200 (of 10000)")
        assert {r.text for r in browser.find_elements("css selector", "#boards td.state")} == {"offline"}
        browser.save_screenshot(str(ARTIFACTS / "ten-thousand-boards.png"))
        assert shown < 10, shown
    finally:
        server.stop()
