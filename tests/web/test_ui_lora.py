"""The web page's LoRA picker, in a real browser against the shared e2e server (it has a LoRA
folder with one LoRA for the tiny SD model; the packaged default config has none)."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from tests.web.conftest import LORA_NAME


def test_the_lora_picker_sends_the_chosen_loras(browser, server):
    page = browser.new_page()
    page.set_default_timeout(240_000)
    sent: list[dict] = []
    page.on(
        "request",
        lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/img_gen") else None,
    )
    page.goto(server.url + "/")
    expect(page.get_by_role("status")).to_have_text("4 models served")
    picker = page.get_by_label("LoRA", exact=True)
    assert picker.locator("option").all_inner_texts() == [LORA_NAME]
    page.get_by_label("Multiplier", exact=True).fill("0.5")
    page.get_by_role("button", name="Add LoRA").click()
    expect(page.get_by_role("button", name=f"Remove LoRA {LORA_NAME}.safetensors")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("a styled picture")
    page.get_by_role("button", name="Generate").click()
    status = page.locator(".job", has_text="a styled picture").locator(".job-status")
    expect(status).to_have_text("Completed", timeout=240_000)
    assert sent[-1]["lora"] == [{"path": f"{LORA_NAME}.safetensors", "multiplier": 0.5}]
    expect(page.get_by_role("img", name="a styled picture")).to_be_visible()
    page.close()
