"""The chat page in a real browser: Debian's headless Chromium driven by Selenium, against the real API
(uvicorn on a loopback port, in a thread of this process), the real model server, the real answer log
and a real (tiny) answerability reader.

One walk through the page's states: a key, a streamed answer with citations and its evidence, a
follow-up that carries the conversation, a refusal by the retrieval gate, a flag found through the API,
a user key refused the review data, an admin approving the flag, and the page on a phone's width.
Every state is saved as a screenshot under var/test-artifacts/web/ (look at them).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from fixtures.api import COLLECTION, make_harness
from fixtures.core import REPO_ROOT
from fixtures.model import free_port

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "web"
ANSWERABLE = "Which embedding model does Candor use?"
FOLLOW_UP = "Is it multilingual?"
OFF_TOPIC = "What is the boiling point of mercury in kelvin?"
WAIT_S = 120


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = "Chromium and its driver are needed: bash .ci/chromium.sh (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def live_api(tmp_path, handbook_chroma, model_server, base_model_dir, shared_models, tiny_reader):
    """The API app served by uvicorn on a free loopback port."""
    import uvicorn

    h = make_harness(
        tmp_path,
        handbook_chroma,
        model_server.url,
        base_model_dir,
        shared_models,
        grounding_enforce=False,  # tokens stream as they come (nothing may be withdrawn)
        reader_path=tiny_reader,
        reader_threshold=1.0,  # the reader marks its evidence but lets the model answer
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(h.client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield h, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser()
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    # the whole page, not only the window: resize to the document's height for the picture
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    size = driver.get_window_size()
    driver.set_window_size(size["width"], min(max(size["height"], height + 140), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
    assert width > 0 and path.stat().st_size > 1000
    return path


def test_ask_see_why_flag_and_review_in_a_real_browser(live_api, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from candor.retrain.adapters import AdapterRegistry
    from candor.retrain.runs import record_run

    h, base = live_api
    wait = WebDriverWait(browser, WAIT_S)
    css = lambda sel: browser.find_element(By.CSS_SELECTOR, sel)  # noqa: E731
    all_css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

    def turns_done(n: int):
        return wait.until(lambda d: len(all_css("#conversation > li[data-answer-id]")) >= n or _failed())

    def _failed():
        errors = [e.text for e in all_css("#conversation .status.error")]
        assert not errors, errors
        return False

    def ask(question: str, n: int):
        box = css("#question")
        box.clear()
        box.send_keys(question)
        box.send_keys(Keys.CONTROL, Keys.ENTER)  # keyboard only
        turns_done(n)
        return all_css("#conversation > li")[n - 1]

    # --- the key: kept for the tab; a wrong one is a sentence --------------------------------------------
    browser.get(base + "/")
    wait.until(ec.visibility_of_element_located((By.ID, "key-input")))
    assert browser.switch_to.active_element.get_attribute("id") == "key-input"  # focus starts there
    css("#key-input").send_keys("cnd_not-a-real-key", Keys.ENTER)
    notice = wait.until(ec.visibility_of_element_located((By.ID, "notice")))
    assert "was not accepted" in notice.text and "Traceback" not in browser.page_source
    assert not css("#views").is_displayed() and not css("#forget-key").is_displayed()
    _shot(browser, "01-key-rejected")
    css("#key-input").send_keys(h.user_key, Keys.ENTER)  # the rejected key is selected: typing replaces it
    wait.until(ec.visibility_of_element_located((By.ID, "question")))
    assert browser.execute_script("return sessionStorage.getItem('candor.apiKey')") == h.user_key
    assert browser.get_cookies() == []
    assert [o.text for o in Select(css("#collection")).options] == [COLLECTION]

    # --- ask: the answer streams in, with citations and the reader's evidence -----------------------------
    first = ask(ANSWERABLE, 1)
    answer_id = first.get_attribute("data-answer-id")
    tokens = int(first.find_element(By.CSS_SELECTOR, ".answer-text").get_attribute("data-token-events") or 0)
    logged = h.client.get(f"/v1/answers/{answer_id}", headers=h.headers()).json()
    assert first.find_element(By.CSS_SELECTOR, ".answer-text").text.strip() == logged["answer"].strip()
    if logged["refused"]:
        assert first.find_elements(By.CSS_SELECTOR, ".refusal")
    else:
        assert tokens > 1, "the answer arrived as one piece: it did not stream"
        cites = first.find_elements(By.CSS_SELECTOR, ".citations li")
        assert cites and "MiniLM" in cites[0].text
    evidence = first.find_element(By.CSS_SELECTOR, ".evidence-passage")
    in_prompt = {c["chunk_id"]: c for c in logged["chunks"] if c["prompt_text"] is not None}
    best = max(in_prompt.values(), key=lambda c: c["answerable"])
    assert evidence.text.split() == best["prompt_text"].split()
    marks = evidence.find_elements(By.TAG_NAME, "mark")
    if best["evidence_start"] is not None:
        assert [m.text for m in marks] == [best["prompt_text"][best["evidence_start"] : best["evidence_end"]].strip()]
    else:
        assert marks == []
    _shot(browser, "02-answer-streamed")

    # --- a follow-up carries the conversation as history ------------------------------------------------
    second = ask(FOLLOW_UP, 2)
    follow = h.services.store.get_answer(second.get_attribute("data-answer-id"))
    assert [m["content"] for m in follow.history][0] == ANSWERABLE and len(follow.history) == 2
    assert ANSWERABLE in follow.retrieval_query

    # --- a question the retrieval gate refuses: the layer and why ----------------------------------------
    css("#new-conversation").click()
    refused = ask(OFF_TOPIC, 1)
    assert refused.get_attribute("data-refusal-layer") == "retrieval_gate"
    reason = refused.find_element(By.CSS_SELECTOR, ".refusal").text
    assert "retrieval gate" in reason and "No passage in this collection answers it" in reason
    _shot(browser, "03-refused-by-the-retrieval-gate")

    # --- flag: the verdict, a correction and a comment; the page says it was recorded --------------------
    form = refused.find_element(By.CSS_SELECTOR, "form.flag-form")
    assert form.find_element(By.CSS_SELECTOR, "input[value=hallucination]").get_attribute("disabled") is not None
    form.find_element(By.CSS_SELECTOR, "input[value=wrong_refusal]").click()
    form.find_element(By.NAME, "correction").send_keys("Mercury boils at 629.88 K.")
    form.find_element(By.NAME, "comment").send_keys("The physics notes hold it.")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    status = wait.until(lambda d: form.find_element(By.CSS_SELECTOR, ".status.ok"))
    assert "Flag recorded" in status.text and "review" in status.text
    flag_id = form.get_attribute("data-flag-id")
    flags = h.client.get(f"/v1/answers/{refused.get_attribute('data-answer-id')}", headers=h.headers()).json()["flags"]
    assert [(f["id"], f["verdict"], f["correction"], f["review_status"]) for f in flags] == [
        (flag_id, "wrong_refusal", "Mercury boils at 629.88 K.", "pending")
    ]
    _shot(browser, "04-flag-recorded")

    # --- a user key does not see the review page's data ---------------------------------------------------
    assert h.client.get("/v1/feedback/pending", headers=h.headers()).status_code == 403
    css("#tab-review").click()
    review_notice = wait.until(ec.visibility_of_element_located((By.ID, "review-notice")))
    assert "needs an admin key" in review_notice.text
    assert not css("#review-body").is_displayed() and all_css("#pending > li") == []
    _shot(browser, "05-review-refused-for-a-user-key")

    # --- an admin approves the flag; runs and adapters are listed ----------------------------------------
    reg = AdapterRegistry.for_settings(h.settings)
    for i, content in enumerate((b"first", b"second")):
        folder = h.settings.data_dir / f"adapter-{i}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text('{"r": 4}')
        (folder / "adapter_model.safetensors").write_bytes(content)
        reg.promote(reg.register(folder, source="loop" if i else "default").version)
    decision = {"verdict": "promote", "reasons": ["every check passed"], "candidate_version": reg.current().version,
                "promoted": True}  # fmt: skip
    record_run(h.settings, {"status": "promoted", "exported_flags": 1, "decision": decision}, "2026-01-01T00:00:00Z")
    css("#forget-key").click()
    wait.until(ec.visibility_of_element_located((By.ID, "key-input")))
    assert browser.execute_script("return sessionStorage.getItem('candor.apiKey')") is None
    css("#key-input").send_keys(h.admin_key, Keys.ENTER)
    wait.until(ec.visibility_of_element_located((By.ID, "tab-review"))).click()
    card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#pending > li[data-flag-id='{flag_id}']"))
    assert OFF_TOPIC in card.text and "Mercury boils at 629.88 K." in card.text
    wait.until(lambda d: "every check passed" in css("#runs").text)
    wait.until(lambda d: reg.current().version in css("#adapters").text)
    card.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys("the gate refused a physics question")
    card.find_element(By.XPATH, ".//button[text()='Approve']").click()
    wait.until(lambda d: card.get_attribute("data-review-status") == "approved")
    stored = h.services.store.get_flag(flag_id)
    assert str(stored.review_status) == "approved" and stored.review_note == "the gate refused a physics question"
    _shot(browser, "06-review-approved-by-an-admin")

    # --- a phone's width: nothing overflows sideways, long text wraps -------------------------------------
    browser.set_window_size(390, 844)
    css("#tab-chat").click()
    long_word = "Hg" + "x" * 400
    ask(f"What is {long_word}?", 1)  # the key was forgotten: a new conversation
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shot(browser, "07-phone-width")
