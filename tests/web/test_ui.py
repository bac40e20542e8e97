"""The web page at `/`, in a real headless browser: Debian's Chromium driven by Playwright
(tests/support/browser.py),
against the server a fresh install starts (the packaged default config, with an API key).

Each test opens a fresh browser context (empty storage) that already holds the key, except the
key test itself. Screenshots of the page at desktop and phone width are written to
JAXVIDEO_SCREENSHOT_DIR (default: a temporary folder); docs/ui.png in the README is the
desktop one (`JAXVIDEO_SCREENSHOT_DIR=docs python -m pytest tests/web/test_ui.py`, then keep
docs/ui-desktop.png as docs/ui.png).
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from jaxvideo import adherence
from tests.web.conftest import DEFAULT_SERVER_KEY

OWN_SERVERS = True
SERVER_GROUP = "default-config"  # the packaged-default server of test_e2e_demo_models.py
IMAGE_MODEL, VIDEO_MODEL = "sd1-shapes-demo", "wan-shapes-demo"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 240_000  # a generation may compile its programs first


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("JAXVIDEO_SCREENSHOT_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def open_page(browser, server, viewport=DESKTOP, key: str | None = DEFAULT_SERVER_KEY) -> Page:
    context = browser.new_context(viewport=viewport)
    if key is not None:
        context.add_init_script(f"localStorage.setItem('jaxvideo.apiKey', {key!r})")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(server.url + "/")
    return page


@pytest.fixture
def page(browser, default_server):
    page = open_page(browser, default_server)
    expect(page.get_by_role("status")).to_contain_text("models served")
    yield page
    assert page.errors == [], page.errors  # no uncaught script error on the way
    page.context.close()


def generate(page: Page, prompt: str) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Generate").click()


def job(page: Page, prompt: str):
    return page.locator(".job", has_text=prompt)


def wait_completed(page: Page, prompt: str) -> None:
    expect(job(page, prompt).locator(".job-status")).to_have_text("Completed", timeout=WAIT_MS)


def shown_picture(page: Page, alt: str) -> np.ndarray:
    """The pixels of the result image with alt text `alt`, read back from the page."""
    data_url = page.get_by_role("img", name=alt).first.evaluate(
        """img => { const c = document.createElement('canvas');
                    c.width = img.naturalWidth; c.height = img.naturalHeight;
                    c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }"""
    )
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_the_page_asks_for_the_api_key_and_sends_it(browser, default_server):
    page = open_page(browser, default_server, key=None)
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("API key", exact=True).fill("wrong")
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_visible()  # refused: asked again, saying why
    expect(dialog.get_by_role("alert")).to_have_text("The server refused this key.")
    dialog.get_by_label("API key", exact=True).fill(DEFAULT_SERVER_KEY)
    dialog.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("status")).to_have_text("5 models served")
    expect(page.get_by_label("Model", exact=True)).to_have_value(IMAGE_MODEL)
    # The key travels in a header: no request of the page carries it in its URL.
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.reload()
    expect(page.get_by_role("status")).to_have_text("5 models served")
    assert urls and not any(DEFAULT_SERVER_KEY in url for url in urls)
    page.context.close()


def test_an_image_appears_with_its_progress_at_100_percent(page, screenshots):
    prompt = "a red circle on a blue background"
    # Fixed: the demo follows ~95% of seeds; for this prompt at its default CFG 1.5, seeds 0-11
    # but 3 (a rounded circle read as a square).
    page.get_by_label("Seed", exact=True).fill("4")
    generate(page, prompt)
    wait_completed(page, prompt)
    bar = job(page, prompt).locator("progress")
    assert bar.evaluate("b => b.value === b.max")
    picture = shown_picture(page, prompt)
    assert picture.shape == (128, 128, 3)  # the demo's default size
    verdict = adherence.check(prompt, picture)
    assert verdict.passed, str(verdict)
    expect(job(page, prompt).get_by_role("button", name="Cancel")).to_be_hidden()
    page.screenshot(path=screenshots / "ui-desktop.png", full_page=True)


def test_a_video_appears_and_plays(page):
    prompt = "a video of waves"
    page.get_by_label("Model", exact=True).select_option(VIDEO_MODEL)
    page.get_by_label("Video", exact=True).check()
    expect(page.get_by_label("Frames", exact=True)).to_be_visible()
    expect(page.get_by_label("Batch count", exact=True)).to_be_hidden()
    page.get_by_label("Frames", exact=True).fill("5")
    page.get_by_label("Steps", exact=True).fill("2")
    generate(page, prompt)
    wait_completed(page, prompt)
    video = page.locator(f'video[aria-label="{prompt}"]')
    expect(video).to_be_visible()
    duration = video.evaluate(
        """v => new Promise((ok, fail) => { if (v.readyState >= 1) return ok(v.duration);
             v.onloadedmetadata = () => ok(v.duration); v.onerror = () => fail(v.error.code); })"""
    )
    assert duration > 0
    download = page.locator(".card", has_text=prompt).get_by_role("link", name="Download")
    assert re.fullmatch(r"job_[0-9a-f]+\.webm", download.get_attribute("download"))


def test_running_and_queued_jobs_can_be_cancelled(page):
    # A long job (max_steps, a batch of 4: most of server.max_work) cannot end while the page
    # reacts; the second waits behind it in the queue.
    page.get_by_label("Sampler", exact=True).select_option("euler")  # lcm stops at 50 steps
    page.get_by_label("Steps", exact=True).fill("150")
    page.get_by_label("Batch count", exact=True).fill("4")
    generate(page, "a long job")
    expect(job(page, "a long job")).to_be_visible()
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_label("Batch count", exact=True).fill("1")
    generate(page, "a queued job")
    expect(job(page, "a queued job").locator(".job-status")).to_have_text(
        re.compile(r"Queued \(position \d\)")
    )
    job(page, "a queued job").get_by_role("button", name="Cancel").click()
    expect(job(page, "a queued job").locator(".job-status")).to_have_text("Cancelled")
    running = job(page, "a long job")
    # Once steps run (after the batch's program compiles), with an ETA.
    expect(running.locator(".job-status")).to_contain_text("s left)", timeout=WAIT_MS)
    expect(running.locator(".job-status")).to_contain_text("Generating: step")
    running.get_by_role("button", name="Cancel").click()
    expect(running.locator(".job-status")).to_have_text("Cancelled")
    expect(page.locator(".card")).to_have_count(0)  # nothing cancelled lands in the history


def test_an_invalid_value_shows_the_servers_error(page):
    page.get_by_label("Width", exact=True).fill("100")
    generate(page, "a green square on a white background")
    alert = page.locator("#form-error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("width must be a multiple of 8, got 100")
    expect(page.locator(".job")).to_have_count(0)


def test_history_survives_a_reload_and_reuse_fills_the_form(page):
    prompt = "a yellow triangle on a purple background"
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_label("Steps", exact=True).fill("20")
    generate(page, prompt)
    wait_completed(page, prompt)
    page.reload()
    expect(page.get_by_role("status")).to_contain_text("models served")
    card = page.locator(".card", has_text=prompt)
    expect(card.get_by_role("img", name=prompt)).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Seed", exact=True).fill("-1")
    card.get_by_role("button", name="Reuse parameters").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
    expect(page.get_by_label("Seed", exact=True)).to_have_value("1234")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("20")
    card.get_by_role("button", name=f"Delete result: {prompt}").click()
    expect(card).to_have_count(0)
    page.reload()
    expect(page.get_by_role("status")).to_contain_text("models served")
    expect(page.locator(".card", has_text=prompt)).to_have_count(0)


def test_the_form_offers_only_what_the_model_takes(page):
    label = page.get_by_label
    expect(label("Distilled guidance", exact=True)).to_be_hidden()  # the SD 1.x demo
    expect(label("Reference images", exact=True)).to_be_hidden()
    expect(label("Init image", exact=True)).to_be_visible()
    expect(label("Cache mode", exact=True)).to_be_visible()
    assert label("Cache mode", exact=True).locator("option").all_inner_texts() == [
        "disabled",
        "ucache",
        "spectrum",
    ]
    page.get_by_label("Model", exact=True).select_option("flux-tiny-demo")
    expect(label("Distilled guidance", exact=True)).to_be_visible()
    expect(label("Flow shift", exact=True)).to_be_visible()
    expect(label("Reference images", exact=True)).to_be_visible()
    expect(label("SLG scale", exact=True)).to_be_hidden()
    page.get_by_label("Model", exact=True).select_option("sd3-tiny-demo")
    expect(label("SLG scale", exact=True)).to_be_visible()
    page.get_by_label("Model", exact=True).select_option("wan22-tiny-demo")  # image-to-video only
    expect(page.locator("#mode-field")).to_be_hidden()
    expect(label("End image", exact=True)).to_be_visible()
    expect(label("High-noise steps", exact=True)).to_be_visible()
    expect(label("LoRA", exact=True)).to_be_hidden()  # the default config has no LoRA folder


def test_reference_images_can_be_dropped_on_their_field(page, tmp_path):
    page.get_by_label("Model", exact=True).select_option("flux-tiny-demo")
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(picture, "PNG")
    # What a drag from the desktop delivers: a DataTransfer holding files.
    transfer = page.evaluate_handle(
        """bytes => { const t = new DataTransfer();
             for (const name of ['a.png', 'b.png'])
               t.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
             return t; }""",
        list(picture.getvalue()),
    )
    page.locator('[data-image="ref_images"]').dispatch_event("drop", {"dataTransfer": transfer})
    previews = page.get_by_role("img", name="Reference images preview")
    expect(previews).to_have_count(2)
    page.get_by_role("button", name="Remove Reference images").click()
    expect(previews).to_have_count(0)


def test_a_painted_mask_inpaints_the_init_image(page, tmp_path):
    init = np.zeros((128, 128, 3), np.uint8)
    init[:] = (255, 255, 255)
    Image.fromarray(init).save(tmp_path / "init.png")
    page.get_by_label("Init image", exact=True).set_input_files(tmp_path / "init.png")
    page.get_by_role("button", name="Paint mask").click()
    canvas = page.get_by_label("Mask painter", exact=True)
    expect(canvas).to_be_visible()
    page.get_by_label("Brush", exact=True).fill("96")  # CSS pixels: about a quarter of the picture
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.get_by_role("button", name="Use mask").click()
    expect(page.get_by_role("img", name="Mask preview")).to_be_visible()
    page.get_by_label("Strength", exact=True).fill("1")
    # Fixed: with the page's random seed, now and then the stroke is filled with background.
    # Seeds 0-7 change it by 15-227 (mean over the centre), seed 0 by 183.
    page.get_by_label("Seed", exact=True).fill("0")
    prompt = "a black circle on a white background"
    generate(page, prompt)
    wait_completed(page, prompt)
    picture = shown_picture(page, prompt).astype(int)
    # Outside the painted stroke the init image is kept; inside it the picture changed.
    assert np.abs(picture[:16] - 255).mean() < 8
    assert np.abs(picture[58:70, 50:78] - 255).mean() > 8


def test_the_page_works_at_phone_width(browser, default_server, screenshots):
    page = open_page(browser, default_server, viewport=PHONE)
    expect(page.get_by_role("status")).to_contain_text("models served")
    # One column: nothing wider than the screen, the Generate button within reach.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    generate_button = page.get_by_role("button", name="Generate")
    assert generate_button.bounding_box()["width"] <= PHONE["width"]
    # Keyboard: the prompt is reachable and Enter on the button submits.
    page.get_by_label("Prompt", exact=True).fill("a white square on a black background")
    generate_button.focus()
    page.keyboard.press("Enter")
    wait_completed(page, "a white square on a black background")
    page.screenshot(path=screenshots / "ui-phone.png", full_page=True)
    page.context.close()
