"""The dashboard in a real Chromium (Debian's `chromium`, driven by Playwright's Python API) against a
real stack: `autotune up` with two simulated hosts, one stack and one browser shared by the module.

Each page's console is watched: an error or an uncaught exception fails the test that opened it.
Screenshots go to $AUTOTUNE_SCREENSHOTS (default: the test's temporary directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from autotune.shared.net import free_port
from autotune.shared.pareto import front
from tests.helpers import small_spec

CHROMIUM = os.environ.get("AUTOTUNE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-token"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.long,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("stack") / "data"
    env = {**os.environ, "AUTOTUNE_DATA_DIR": str(data), "AUTOTUNE_API_TOKEN": TOKEN}
    env.pop("AUTOTUNE_NATS_URL", None)
    port = free_port()
    up = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "up", "--nats-port", str(free_port()), "--api-port", str(port), "--hosts", "2",
         "--simulate", "2xH100", "--time-scale", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert up.poll() is None, up.stdout.read()
            try:
                if httpx.get(f"{base}/api/ready", timeout=2).status_code == 200 and len(httpx.get(f"{base}/api/hosts").json()) == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.25)
        yield base
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            out, _ = up.communicate()
        print(out[-3000:])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("AUTOTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Console:
    """Every console error and uncaught exception of a page; `allowed` for the ones a test causes on purpose."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught {e}"))

    def check(self, allowed: tuple[str, ...] = ()) -> None:
        left = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not left, "console errors:\n" + "\n".join(left)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.console = Console(pg)
    yield pg
    context.close()


def submit(base: str, raw: dict, simulate: bool = True) -> str:
    r = httpx.post(f"{base}/api/tasks", params={"simulate": simulate}, json=raw, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def finished(base: str, task: str, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = httpx.get(f"{base}/api/tasks/{task}").json()
        if t["status"] in ("completed", "failed", "cancelled", "rejected"):
            return t
        time.sleep(0.5)
    raise AssertionError(f"task {task} did not finish")


def tuning_spec(name: str, experiments: int = 8) -> dict:
    return small_spec(
        name,
        parameters={"mem-fraction-static": [0.8, 0.85, 0.88, 0.9], "max-running-requests": [8, 64]},
        optimization={"max_iterations": experiments, "max_parallel": 2},
        slo={"tpot": {"threshold": 0.05}},
    )


def test_overview_and_task_pages_follow_a_running_task_without_a_reload(stack, page, shots):
    page.goto(stack + "/")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__loaded = 'overview'")  # gone if the page were reloaded
    gpu_row = page.locator('tr[data-gpu="local-0/0"]')
    assert gpu_row.count() == 1 and "SIMULATED" in page.inner_text("body")
    task = submit(stack, tuning_spec("live-view"))
    # the running task and the GPUs it holds appear on the open overview
    page.wait_for_selector(f'#running a[href="/tasks/{task}"]')
    page.wait_for_function("Number(document.querySelector('tr[data-gpu=\"local-0/0\"]').dataset.samples || 0) >= 2")
    page.wait_for_function("Number(document.querySelector('[data-chart=\"timeline\"]')?.dataset.bars || 0) >= 1")
    page.wait_for_selector('#fleet a[href^="/tasks/live-view/experiments/"]')
    assert page.evaluate("window.__loaded") == "overview"
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    page.goto(f"{stack}/tasks/{task}")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__loaded = 'task'")
    rows_before = page.locator("#experiments tr[data-n]").count()
    points_before = int(page.get_attribute('[data-chart="pareto"]', "data-points") or 0)
    assert rows_before < 8
    # experiment rows and chart points arrive while the page stays open
    page.wait_for_function("document.querySelectorAll('#experiments tr[data-n]').length >= 8", timeout=120_000)
    page.wait_for_function(
        f"Number(document.querySelector('[data-chart=\"pareto\"]')?.dataset.points || 0) > {points_before}", timeout=120_000
    )
    finished(stack, task)
    page.wait_for_selector("#task-head .badge.st-completed", timeout=30_000)
    page.wait_for_function("Number(document.querySelector('[data-chart=\"pareto\"]').dataset.points) >= 6")
    assert page.evaluate("window.__loaded") == "task", "updated without a reload"
    page.screenshot(path=str(shots / "task.png"), full_page=True)
    page.console.check()


def test_click_through_task_experiment_host(stack, page, shots):
    task = submit(stack, tuning_spec("clicks", experiments=2))
    finished(stack, task)
    page.goto(f"{stack}/tasks")
    page.click(f'a[href="/tasks/{task}"]')
    page.wait_for_url(f"**/tasks/{task}")
    page.click('#experiments tr[data-n="1"] a[href*="/experiments/1"]')
    page.wait_for_url(f"**/tasks/{task}/experiments/1")
    assert page.inner_text("h1").startswith("Experiment 1")
    page.wait_for_selector('[data-chart="cdf"] canvas')
    assert "meets the SLOs" in page.inner_text("#exp-head") or "misses the SLOs" in page.inner_text("#exp-head")
    page.screenshot(path=str(shots / "experiment.png"), full_page=True)
    page.click('#exp-head a[href^="/hosts/"]')
    page.wait_for_url("**/hosts/local-*")
    assert page.inner_text("h1").startswith("Host local-")
    page.wait_for_selector('[data-chart="telemetry"] canvas')
    assert page.locator(f'a[href^="/tasks/{task}/experiments/"]').count() >= 1
    page.screenshot(path=str(shots / "host.png"), full_page=True)
    page.goto(f"{stack}/compare?task={task}&task=live-view")
    page.wait_for_selector('[data-chart="compare"] canvas')
    page.console.check()


def test_pareto_plot_has_the_frontier_and_a_point_opens_its_experiment(stack, page):
    task = "live-view"
    finished(stack, task)
    exps = httpx.get(f"{stack}/api/tasks/{task}/experiments", params={"limit": 1000}).json()["items"]
    done = [e for e in exps if e["status"] == "completed" and not e["hard_fail"] and e["mean_tpot"]]
    # tokens/s/user (1 / mean TPOT) and tokens/s/GPU, both the higher the better: the dominance rule of the strategies
    expected = front(done, key=lambda e: [-1 / e["mean_tpot"], -e["mean_total_tps_per_gpu"]])
    assert expected
    page.goto(f"{stack}/tasks/{task}")
    chart = page.locator('[data-chart="pareto"]')
    page.wait_for_selector('[data-chart="pareto"] canvas')
    shown = chart.get_attribute("data-frontier")
    assert sorted(int(n) for n in shown.split(",")) == sorted(e["n"] for e in expected)
    n = expected[0]["n"]
    at = page.evaluate(f"document.querySelector('[data-chart=\"pareto\"]')._pointOf({n})")
    page.mouse.click(at["x"], at["y"])
    page.wait_for_url(f"**/tasks/{task}/experiments/*")
    assert page.inner_text("h1").startswith("Experiment ")
    page.console.check()


def refused_then_accepted(page, action: str, *, unchanged) -> None:
    """The `action` button with a wrong token: refused with a 401 and `unchanged()` holds; asked again
    (the wrong token was forgotten), the right one is accepted."""
    page.click(f'button[data-action="{action}"]')
    page.fill("#token-input", "not-the-token")
    page.click("#token-ok")
    page.wait_for_function("document.getElementById('toast').dataset.kind === 'error'")
    assert "refused (401)" in page.inner_text("#toast")
    assert unchanged(), "refused: nothing changed"
    page.click(f'button[data-action="{action}"]')
    page.fill("#token-input", TOKEN)
    page.click("#token-ok")
    page.wait_for_function(f"document.getElementById('toast').textContent.startsWith('{action} requested')")


def test_cancel_needs_the_token(stack, page):
    task = submit(stack, tuning_spec("to-cancel", experiments=40))
    page.goto(f"{stack}/tasks/{task}")
    page.wait_for_selector('#live-status[data-state="live"]')
    # not cancelling: still submitted (a first test on a fresh stack may click before the scheduler starts it) or running
    refused_then_accepted(page, "cancel", unchanged=lambda: httpx.get(f"{stack}/api/tasks/{task}").json()["status"] in ("submitted", "running"))
    # the page shows the task ending, from the event stream
    page.wait_for_selector("#task-head .badge.st-cancelled, #task-head .badge.st-cancelling", timeout=60_000)
    assert finished(stack, task)["status"] == "cancelled"
    page.console.check(allowed=("status of 401",))


def test_submit_shows_line_and_path_then_submits_a_rehearsal(stack, page, tmp_path, shots):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_name: t\nmodel: m\noptimization:\n  max_iterations: lots\n")
    page.goto(stack + "/submit")
    page.set_input_files("#task-file", str(bad))
    page.wait_for_function("document.getElementById('task-text').value.includes('lots')")
    page.click("#submit-button")
    page.wait_for_selector('#validation [data-valid="false"]')
    assert page.inner_text("#validation code") == "autotune: invalid task file bad.yaml:4: $.optimization.max_iterations: Expected `int`, got `str`"
    assert page.inner_text("#validation .bad").strip() == "4 |   max_iterations: lots"
    page.screenshot(path=str(shots / "submit.png"), full_page=True)
    # the same as the command line says it
    cli = subprocess.run([sys.executable, "-m", "autotune.cli", "submit", "bad.yaml"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 2 and cli.stderr.strip() == page.inner_text("#validation code")

    good = small_spec("from-browser", deployment_mode="docker", optimization={"max_iterations": 1})
    page.fill("#task-text", json.dumps(good))
    page.check("#task-simulate")
    page.click("#submit-button")
    page.fill("#token-input", TOKEN)
    page.click("#token-ok")
    page.wait_for_url("**/tasks/from-browser")
    assert "SIMULATED" in page.inner_text("h1")
    assert httpx.get(f"{stack}/api/tasks/from-browser").json()["simulate"] is True
    page.console.check()


def test_a_dropped_stream_resumes_after_the_last_sequence(stack, page):
    page.goto(stack + "/")
    page.wait_for_selector('#live-status[data-state="live"]')
    task = submit(stack, tuning_spec("resume", experiments=2))
    page.wait_for_selector(f'#running a[href="/tasks/{task}"]')
    last = page.evaluate("AutotuneLive.streams.events.last")
    assert last > 0
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url) if "/api/events" in r.url and "subject=autotune.%3E" in r.url else None)
    page.evaluate("AutotuneLive.drop('events')")
    page.wait_for_function("AutotuneLive.streams.events.state === 'live'")
    seen = page.evaluate("AutotuneLive.streams.events.last")
    assert urls and f"since_seq={last + 1}" in urls[0], urls
    assert seen >= last
    finished(stack, task)
    page.console.check()


def test_a_host_per_row_expands_in_place_and_its_cells_follow_the_samples(stack, page):
    """The layout of a large fleet (asked for here with fleet_view=hosts: this stack has 4 GPUs): a
    host's GPU cells take live samples; ▸ shows its GPU rows without a reload, ▾ folds them."""
    page.goto(stack + "/?fleet_view=hosts")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__loaded = 'hosts'")
    assert page.locator("tr[data-gpu]").count() == 0 and page.locator('.strip i[data-gpu="local-0/0"]').count() == 1
    page.wait_for_function("Number(document.querySelector('tr[data-host=\"local-0\"]').dataset.samples || 0) >= 2")
    assert page.get_attribute('.strip i[data-gpu="local-0/0"]', "data-u") != "", "the cell holds the latest utilization"
    page.click('tr[data-host="local-0"] a.expand')
    page.wait_for_selector('tr[data-gpu="local-0/1"]')
    assert "expand=local-0" in page.url and page.evaluate("window.__loaded") == "hosts", "in the URL, without a reload"
    page.wait_for_function("document.querySelector('tr[data-gpu=\"local-0/0\"] polyline[data-spark=\"util\"]').getAttribute('points')")
    page.click('tr[data-gpu="local-0/0"] a.expand')
    page.wait_for_selector('tr[data-host="local-0"]')
    assert page.locator("tr[data-gpu]").count() == 0 and "expand=" not in page.url
    page.console.check()


def test_a_zoomed_chart_keeps_its_zoom_while_points_arrive_and_compare_follows(stack, page):
    task = submit(stack, tuning_spec("zoomed", experiments=10))
    page.goto(f"{stack}/tasks/{task}")
    page.wait_for_selector('[data-chart="pareto"] canvas', timeout=120_000)
    page.evaluate("window.__loaded = 'task'")
    over = page.locator('[data-chart="pareto"] .u-over').bounding_box()
    page.mouse.move(over["x"] + over["width"] * 0.2, over["y"] + over["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.6, over["y"] + over["height"] * 0.7, steps=8)
    page.mouse.up()
    scales = "(() => { const u = document.querySelector('[data-chart=\"pareto\"]')._plot; return [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max]; })()"
    zoomed = page.evaluate(scales)
    points = int(page.get_attribute('[data-chart="pareto"]', "data-points"))
    assert page.evaluate("document.querySelector('[data-chart=\"pareto\"]')._plot._zoomed"), "the drag zoomed in"
    page.wait_for_function(f"Number(document.querySelector('[data-chart=\"pareto\"]').dataset.points) > {points}", timeout=120_000)
    assert page.evaluate(scales) == zoomed, "a point arrived and the zoom stayed"
    page.dblclick('[data-chart="pareto"] .u-over')
    page.wait_for_function(f"document.querySelector('[data-chart=\"pareto\"]')._plot.scales.x.min !== {zoomed[0]}")
    assert page.evaluate("window.__loaded") == "task"

    # compare: a finished task and this running one; its points and its column follow the log
    page.goto(f"{stack}/compare?task=live-view&task={task}")
    page.wait_for_selector('#live-status[data-state="live"]')
    page.evaluate("window.__loaded = 'compare'")
    page.wait_for_selector('[data-chart="compare"] canvas')
    before = int(page.get_attribute('[data-chart="compare"]', "data-points"))
    done = page.inner_text("#compare-best tr:nth-child(4) td:nth-child(3)")
    page.wait_for_function(f"Number(document.querySelector('[data-chart=\"compare\"]').dataset.points) > {before}", timeout=120_000)
    page.wait_for_function(f"document.querySelector('#compare-best tr:nth-child(4) td:nth-child(3)').innerText !== {json.dumps(done)}")
    assert page.evaluate("window.__loaded") == "compare", "updated without a reload"
    finished(stack, task)
    page.console.check()


def test_drain_and_remove_need_the_token(stack, page):
    """Last in this module: it takes local-1 out of the fleet."""
    host = "local-1"
    page.goto(f"{stack}/hosts/{host}")
    page.wait_for_selector('#live-status[data-state="live"]')
    refused_then_accepted(page, "drain", unchanged=lambda: httpx.get(f"{stack}/api/hosts/{host}").json()["drain_requested_at"] is None)
    page.wait_for_selector("#host-head .badge.st-draining")  # from the event stream, no reload
    assert httpx.get(f"{stack}/api/hosts/{host}").json()["drain_requested_at"]

    page.evaluate("sessionStorage.clear()")  # a new session: no token
    page.once("dialog", lambda d: d.accept())
    page.click('button[data-action="remove"]')
    page.fill("#token-input", "")
    page.click("#token-ok")
    page.wait_for_function("document.getElementById('toast').textContent.includes('refused (401)')")
    assert httpx.get(f"{stack}/api/hosts/{host}").json()["lifecycle"] != "removed", "refused: nothing changed"
    page.once("dialog", lambda d: d.accept())
    page.click('button[data-action="remove"]')
    page.fill("#token-input", TOKEN)
    page.click("#token-ok")
    page.wait_for_function(f"document.getElementById('toast').textContent.startsWith('{host} removed')")
    page.wait_for_function("document.querySelector('#host-head').innerText.includes('log: removed')")
    assert httpx.get(f"{stack}/api/hosts/{host}").json()["lifecycle"] == "removed"
    page.console.check(allowed=("status of 401",))
