"""The web app in a real browser (Debian's headless Chromium driven by Playwright) against the real local
stack started by `imgpipe dev`: Kafka broker, Dagster webserver + daemon, local OIDC provider, web app.

Sign in as alice+x@, upload a batch with one bad file, see its reason, watch the results arrive live, open
the gallery, then sign in as alice-x@ — whose e-mail the old mapping made the same user id — and see none
of it, even with its batch id in the URL; then as the operator (a role in the token) see everyone's stats. A screenshot of each step is saved
under the stack's data dir (``artifacts/screenshots``) and its path printed."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from orchestration.devtools import processes
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes
from tests.support.stack import DevStack

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (`apt-get install chromium`; .ci/run does it)"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("web-stack")
    ports = {name: processes.free_port() for name in ("kafka", "dagster", "web", "oidc")}
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(data), "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
           "IMGPIPE_WEBSERVER_PORT": str(ports["dagster"]), "IMGPIPE_WEB_PORT": str(ports["web"]),
           "IMGPIPE_OIDC_PORT": str(ports["oidc"]), "IMGPIPE_PROFILE": "local"}
    proc = DevStack(env, "--no-sample").ready()
    shots = data / "artifacts" / "screenshots"
    shots.mkdir(parents=True)
    yield {"url": f"http://127.0.0.1:{ports['web']}", "data": data, "shots": shots}
    proc.stop(timeout=60)
    if os.environ.get("IMGPIPE_SCREENSHOT_DIR"):  # keep them, e.g. for the README
        shutil.copytree(shots, os.environ["IMGPIPE_SCREENSHOT_DIR"], dirs_exist_ok=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _shot(page, stack, name):
    path = stack["shots"] / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _sign_in(page, stack, email):
    page.goto(stack["url"])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name=email, exact=True).click()  # the local provider's predefined user
    # (plain() puts an invisible word joiner after '@', so no mailto: link is made of the address)
    shown = re.escape(email).replace("@", "@\u2060?")
    page.get_by_text(re.compile(f"Signed in as {shown}")).wait_for(timeout=30_000)


def test_upload_watch_results_and_privacy(stack, browser, tmp_path):
    good1, good2 = tmp_path / "lake.jpg", tmp_path / "forest.jpg"
    # Stored sideways with EXIF orientation 6, as phones do: it must come out upright.
    good1.write_bytes(jpeg_bytes(synthetic_photo(1600, 1200, 30, "lake").transpose(Image.Transpose.ROTATE_90), orientation=6))
    good2.write_bytes(jpeg_bytes(synthetic_photo(1200, 800, 140, "forest").transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    bad = tmp_path / "readme.jpg"
    bad.write_text("this is text, not a picture")

    alice = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = alice.new_page()
    _sign_in(page, stack, "alice+x@example.com")
    _shot(page, stack, "01-upload-page")
    assert page.get_by_role("button", name="Deploy").count() == 0  # no developer menus for users

    page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files([str(good1), str(good2), str(bad)])
    page.get_by_role("button", name="Remove readme.jpg").wait_for()
    page.get_by_text(re.compile(r"readme\.jpg: not a supported image.*text/plain")).wait_for()
    page.get_by_label("Title").fill("Weekend [click](https://evil.example) :material/home: me@evil.example")
    _shot(page, stack, "02-file-checks")
    page.get_by_role("button", name="Upload", exact=True).click()
    success = page.get_by_test_id("stAlertContentSuccess")
    success.wait_for(timeout=30_000)
    batch_id = re.search(r"b-\d{8}-\d{6}-[0-9a-f]{8}", success.inner_text()).group(0)
    _shot(page, stack, "03-uploaded")

    page.get_by_role("link", name="See its results").click()
    page.get_by_text(f"{batch_id} · completed · 2 processed · 1 rejected · 3/3 done").wait_for(timeout=90_000)  # live
    page.get_by_text(re.compile(r"readme\.jpg.*rejected")).wait_for()
    page.get_by_test_id("stImage").nth(1).wait_for()  # (a rerun's elements arrive one after another)
    assert page.get_by_test_id("stImage").count() == 2
    # What each image shows, live: its labels under it (after its image.understood event), then found again
    # by one of them in the search across the person's batches.
    label_line = page.get_by_text(re.compile(r"^.+ \d+% · .+ \d+% · .+ \d+%$")).first
    label_line.wait_for(timeout=60_000)
    top_label = re.match(r"^(.+?) \d+%", label_line.inner_text()).group(1)
    _shot(page, stack, "04-results-live")
    page.get_by_label("Find your images by label").fill(top_label)
    page.get_by_label("Find your images by label").press("Enter")
    page.get_by_text(re.compile(r"^\d+ image\(s\)$")).wait_for(timeout=30_000)
    page.get_by_role("link", name="Open batch").first.wait_for()
    page.get_by_label("Find your images by label").fill("")
    page.get_by_label("Find your images by label").press("Enter")
    page.get_by_text("Details and downloads").first.click()
    page.get_by_role("button", name=re.compile(r"large .* JPEG")).first.wait_for()
    page.get_by_text(re.compile(r"1600×1200 JPEG · [\d.]+ [KM]B")).first.wait_for()
    links = page.locator("a[href*='evil.example']")
    assert links.count() == 0, [links.nth(i).evaluate("e => e.parentElement.outerHTML") for i in range(links.count())]  # the title's Markdown link is shown as text
    page.get_by_text(re.compile(r"Weekend \[click\]\(https\u2060?:\u2060?//evil\.example\)")).first.wait_for()  # as typed
    # No icon and no mailto: link made of the title: its icon code and address show as typed.
    assert page.locator("a[href^='mailto:']").count() == 0
    icons = page.locator("[data-testid=stIconMaterial]").all_inner_texts()
    assert "home" not in icons, icons
    page.get_by_text(re.compile(r":\u2060?material/home:\u2060? me@\u2060?evil\.example")).first.wait_for()
    _shot(page, stack, "05-gallery-details")

    page.get_by_role("link", name="Stats").click()
    page.get_by_text("Download CSV").wait_for(timeout=30_000)
    _shot(page, stack, "06-stats")

    # Delete takes two clicks (the second in a box of its own); the page says so at once, with Undo, and the
    # trash count changes without a reload (the delete happens in the live part of the page).
    page.get_by_role("link", name="Results").click()
    page.get_by_text("Recently deleted (0)").wait_for(timeout=30_000)
    page.get_by_role("button", name=re.compile("Delete batch")).first.click()
    page.get_by_role("button", name="Move to trash").click()
    page.get_by_text(re.compile(r"Moved .* to the trash")).wait_for(timeout=30_000)
    page.get_by_text("Recently deleted (1)").wait_for(timeout=30_000)
    page.get_by_role("button", name="Undo").click()
    page.get_by_text(re.compile(r"Restored .*b-")).wait_for(timeout=30_000)
    page.get_by_text("Recently deleted (0)").wait_for(timeout=30_000)
    alice.close()

    # alice-x@example.com: under the old e-mail mapping the same user id as alice+x@example.com.
    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = other.new_page()
    _sign_in(page, stack, "alice-x@example.com")
    page.get_by_role("link", name="Results").click()
    page.get_by_text("No batches yet").wait_for(timeout=30_000)
    assert page.get_by_text(batch_id).count() == 0
    page.goto(f"{stack['url']}/results?batch={batch_id}")
    page.get_by_text("No such batch among yours").wait_for(timeout=30_000)
    assert page.get_by_text("Weekend").count() == 0
    _shot(page, stack, "07-other-user-sees-nothing")
    page.get_by_role("link", name="Stats").click()
    page.get_by_text("No processed images yet").wait_for(timeout=30_000)
    other.close()

    ops = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ops.new_page()
    _sign_in(page, stack, "ops@example.com")
    page.get_by_role("link", name="Stats").click()
    page.get_by_text("Statistics — all users").wait_for(timeout=30_000)
    page.get_by_text("Download CSV").wait_for(timeout=30_000)
    _shot(page, stack, "08-operator-stats")
    ops.close()
