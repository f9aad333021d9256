"""The web app in a real browser (Debian's headless Chromium driven by Playwright) against the real local
stack started by `imgpipe dev`: Kafka broker, Dagster webserver + daemon, local OIDC provider, web app.

Sign in as alice+x@, upload a batch with one bad file, see its reason, watch the results arrive live, open
the gallery, then sign in as alice-x@ — whose e-mail the old mapping made the same user id — and see none
of it, even with its batch id in the URL; then as the operator (a role in the token) see everyone's stats. A screenshot of each step is saved
under the stack's data dir (``artifacts/screenshots``) and its path printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
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
ROOT = Path(__file__).resolve().parents[1]
AXE_JS = Path(os.environ.get("IMGPIPE_AXE_JS") or ROOT / ".tools/axe/node_modules/axe-core/axe.min.js")
VIEWPORTS = {"desktop": {"width": 1400, "height": 1000}, "phone": {"width": 390, "height": 844}}
# The newcomers of the walk below, one per viewport (the local provider offers them beside the usual three).
NEWCOMERS = {"desktop": "dana@example.com", "phone": "pat@example.com"}
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("web-stack")
    ports = {name: processes.free_port() for name in ("kafka", "dagster", "web", "oidc")}
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(data), "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
           "IMGPIPE_WEBSERVER_PORT": str(ports["dagster"]), "IMGPIPE_WEB_PORT": str(ports["web"]),
           "IMGPIPE_OIDC_PORT": str(ports["oidc"]), "IMGPIPE_PROFILE": "local",
           "IMGPIPE_DEV_USERS": ",".join(["alice+x@example.com", "alice-x@example.com", "ops@example.com",
                                          *NEWCOMERS.values()])}
    proc = DevStack(env, "--no-sample").ready()
    shots = data / "artifacts" / "screenshots"
    shots.mkdir(parents=True)
    yield {"url": f"http://127.0.0.1:{ports['web']}", "data": data, "shots": shots, "env": env}
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
    # (plain() puts an invisible word joiner after '@', so no mailto: link is made of the address; on a phone
    # the sidebar that says it is folded away)
    shown = re.escape(email).replace("@", "@\u2060?")
    page.get_by_text(re.compile(f"Signed in as {shown}")).wait_for(timeout=30_000, state="attached")


def _accessible(page, where: str) -> None:
    """axe-core on the page as it is now: no serious or critical violation (WCAG 2.1 A/AA and best practices)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE_JS.read_text())
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))""")
    assert found == [], f"{where}: {json.dumps(found, indent=1)}"


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
    page.get_by_role("button", name="Upload 2 image(s)", exact=True).click()
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
    page.get_by_role("button", name="Details", exact=True).first.click()
    page.get_by_role("button", name="Download large").first.wait_for()
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


def _transparent_png(path: Path) -> None:
    from PIL import ImageDraw

    im = Image.new("RGBA", (480, 360), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((60, 40, 420, 320), fill=(200, 40, 40, 255))
    im.save(path, "PNG")


@pytest.mark.skipif(not AXE_JS.exists(), reason="axe-core is not installed (.ci/run installs it into .tools/axe)")
@pytest.mark.parametrize("device", list(VIEWPORTS))
def test_the_newcomer_path(stack, browser, tmp_path, device):
    """What a new user does, at a desktop and a phone's size, with axe-core run on each page on the way: sign in,
    upload two images with metadata (a bad metadata line first, said under its field), double-click Upload (one
    batch), watch the results while another batch arrives (what is open stays open), open an image's details,
    download the originals and the renditions as ZIPs, delete with Undo, delete and restore from the trash,
    read the statistics; then an operator opens the batch read-only."""
    me, title = NEWCOMERS[device], f"Harbour walk {device}"
    photo, logo = tmp_path / "harbour.jpg", tmp_path / "logo.png"
    photo.write_bytes(jpeg_bytes(synthetic_photo(1600, 1200, 200, "harbour")))
    _transparent_png(logo)
    context = browser.new_context(viewport=VIEWPORTS[device], accept_downloads=True)
    page = context.new_page()

    def shot(name):
        _shot(page, stack, f"{device}-{name}")

    _sign_in(page, stack, me)
    _accessible(page, "upload page")
    if device == "desktop":  # (on a phone the sidebar is folded away) icons are not read out as words
        assert [page.get_by_role("link", name=n, exact=True).count() for n in ("Upload", "Results", "Stats")] == [1] * 3
    # The form's button is not one more "Upload" (beside the page link and the file picker's button).
    assert page.get_by_role("button", name="Upload batch", exact=True).count() == 1
    page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files([str(photo), str(logo)])
    page.get_by_label("Title").fill(title)
    page.get_by_role("textbox", name="Tags").fill("sea, boats")
    page.get_by_role("textbox", name="More metadata").fill("place=Kiel\nno equals sign")
    page.get_by_role("button", name="Upload 2 image(s)", exact=True).click()
    page.get_by_text(re.compile(r"More metadata: metadata line 2 .*key=value")).wait_for(timeout=30_000)
    _accessible(page, "upload page with a bad metadata line")
    shot("01-upload-form")
    page.get_by_role("textbox", name="More metadata").fill("place=Kiel")
    page.get_by_role("button", name="Upload 2 image(s)", exact=True).dblclick()
    success = page.get_by_test_id("stAlertContentSuccess")
    success.wait_for(timeout=60_000)
    batch_id = re.search(r"b-\d{8}-\d{6}-[0-9a-f]{8}", success.inner_text()).group(0)
    _accessible(page, "upload page after the upload")
    shot("02-uploaded")

    # All of the person's batches: the double-click made one, and it completes live.
    page.goto(f"{stack['url']}/results")
    mine = page.get_by_test_id("stExpander").filter(has_text=title)
    mine.get_by_text(re.compile(r"completed · 2 processed")).first.wait_for(timeout=120_000)
    assert mine.count() == 1
    mine.get_by_test_id("stImage").nth(1).wait_for(timeout=30_000)
    first, second = (mine.get_by_test_id("stImage").nth(i).bounding_box() for i in (0, 1))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] > first["x"]  # side by side, on a phone too
    page.get_by_text(re.compile("place:\u2060? Kiel")).wait_for()  # the person's own metadata comes back
    mine.get_by_role("button", name="Details", exact=True).first.click()
    details = page.get_by_text(re.compile(r"1600×1200 JPEG · [\d.]+ [KM]B"))
    details.wait_for()
    # Another batch arrives (from the CLI) while the details are open: they stay open, the batch stays expanded.
    subprocess.run([sys.executable, "-m", "orchestration.cli", "upload", str(photo), "--user", me, "--meta",
                    "title=Arrived meanwhile"], env=stack["env"], check=True, timeout=120, capture_output=True)
    page.get_by_test_id("stExpander").filter(has_text="Arrived meanwhile").wait_for(timeout=90_000)
    assert details.is_visible() and mine.get_by_test_id("stImage").count() == 2
    _accessible(page, "results with details open")
    shot("03-results-live")
    page.keyboard.press("Escape")

    # Downloads: the originals exactly as uploaded, and every rendition, each a ZIP.
    mine.get_by_role("button", name=re.compile("Download …")).click()
    page.get_by_role("combobox", name=re.compile("Files")).click()
    page.get_by_role("option", name="originals").click()
    with page.expect_download() as got:
        page.get_by_role("button", name="Download originals as ZIP (2 files)").click()
    with zipfile.ZipFile(got.value.path()) as z:
        assert {n: z.read(n) for n in z.namelist()} == {"harbour.jpg": photo.read_bytes(), "logo.png": logo.read_bytes()}
    page.get_by_role("combobox", name=re.compile("Files")).click()
    page.get_by_role("option", name="all renditions").click()
    with page.expect_download() as got:
        page.get_by_role("button", name=re.compile(r"Download all renditions as ZIP \(\d+ files\)")).click()
    with zipfile.ZipFile(got.value.path()) as z:
        names = z.namelist()
        assert len(names) >= 6 and {n.split("_")[0] for n in names} == {"harbour", "logo"}, names
        for n in names:
            Image.open(z.open(n)).verify()  # each a whole picture
    _accessible(page, "downloads")
    page.keyboard.press("Escape")

    # Delete, Undo; delete again and restore from the trash.
    mine.get_by_role("button", name=re.compile("Delete batch")).click()
    page.get_by_role("button", name="Move to trash").click()
    page.get_by_text(re.compile(r"Moved .* to the trash")).wait_for(timeout=30_000)
    _accessible(page, "after a delete")
    shot("04-deleted-with-undo")
    page.get_by_role("button", name="Undo").click()
    page.get_by_text(re.compile(f"Restored {batch_id}")).wait_for(timeout=30_000)
    mine.get_by_role("button", name=re.compile("Delete batch")).click()
    page.get_by_role("button", name="Move to trash").click()
    page.get_by_text("Recently deleted (1)").click()
    page.get_by_role("button", name="Restore").click()
    page.get_by_text(re.compile(f"Restored {batch_id}")).wait_for(timeout=30_000)
    page.get_by_text("Recently deleted (0)").wait_for(timeout=30_000)

    page.goto(f"{stack['url']}/stats")
    page.get_by_text("Download CSV").wait_for(timeout=30_000)
    _accessible(page, "statistics")
    shot("05-stats")
    context.close()

    ops = browser.new_context(viewport=VIEWPORTS[device])
    page = ops.new_page()
    _sign_in(page, stack, "ops@example.com")
    page.goto(f"{stack['url']}/results?batch={batch_id}")
    shown = re.escape(me).replace("@", "@\u2060?")
    page.get_by_text(re.compile(f"Read-only: {shown}'s batch")).wait_for(timeout=30_000)
    assert page.get_by_role("button", name=re.compile("Delete batch")).count() == 0
    _accessible(page, "operator's read-only view")
    shot("06-operator-view")
    page.goto(f"{stack['url']}/stats")
    page.get_by_text("Statistics — all users").wait_for(timeout=30_000)
    _accessible(page, "operator's statistics")
    ops.close()
