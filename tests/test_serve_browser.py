"""`dicomvec serve` in a real browser: headless Chromium (Debian's chromium + chromium-driver,
installed by scripts/chromium/install.sh) driven by Selenium, against `dicomvec serve` started
as a subprocess on an archive the test fills. Upload a DICOM, read the ranked ImageIDs, open a
result, "more like this", the report text, the thumbnail provider's refusal of text. A
screenshot of each page is kept (folder printed; ``DICOMVEC_SCREENSHOTS`` to choose it).

Slow suite. Without chromium the tests skip locally and FAIL in CI (``CI=true``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from dicomvec.pipeline.options import DicomvecOptions
from dicomvec.search import SearchRequest, run_search
from tests.conftest import in_ci
from tests.serve_fixtures import MISSING_ID, Server, fill_archive, impression_of, serve_flags
from tests.sinks import SINKS, sink_url

pytestmark = pytest.mark.slow

BROWSER = os.environ.get("DICOMVEC_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("DICOMVEC_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DICOMVEC_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nserve screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (BROWSER, DRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        missing.append(f"selenium ({exc})")
    if missing:
        message = (f"the browser tests need {', '.join(missing)}: run scripts/chromium/install.sh "
                   "and pip install -e '.[test]'")
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module", params=SINKS)
def served(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    sink = sink_url(request.param, request, root)
    stored = fill_archive(root, sink)
    server = Server(serve_flags(sink))
    yield server, sink, stored, request.param
    server.stop()


def _by(kind):
    from selenium.webdriver.common.by import By
    return getattr(By, kind)


def _css(driver, selector):
    return driver.find_elements(_by("CSS_SELECTOR"), selector)


def _one(driver, selector):
    return driver.find_element(_by("CSS_SELECTOR"), selector)


def _wait(driver, selector, timeout=30):
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(
        EC.presence_of_element_located((_by("CSS_SELECTOR"), selector)))


def _navigate(driver, element):
    """Click ``element`` and wait until the next page has replaced this one and finished loading.

    The old page is marked with a property on its ``window``; a new document gets a new window
    object, so the mark's absence means the navigation happened. (Selenium's ``staleness_of``
    polls the old element, and ChromeDriver can answer that poll mid-navigation with an "unknown
    error: Node with given id does not belong to the document" instead of a stale-element error:
    a race in the test, not in the page.) Errors from a script run while the document is being
    replaced are retried until the time-out."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait
    driver.execute_script("window.dicomvecOldPage = true;")
    element.click()
    WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return !window.dicomvecOldPage && document.readyState === 'complete';"))


def _result_ids(driver, grid="#results"):
    return [card.get_attribute("data-image-id") for card in _css(driver, f"{grid} figure.card")]


def _images_loaded(driver, selector) -> bool:
    """Every <img> under ``selector`` has decoded (a real PNG reached the browser)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).every("
        "i => i.complete && i.naturalWidth > 0);", selector)


def _shot(driver, shots, name, kind):
    driver.save_screenshot(str(shots / f"{kind}-{name}.png"))


def test_upload_a_dicom_and_get_the_engine_ranking(browser, served, shots):
    server, sink, stored, kind = served
    query = stored[3]
    expected = run_search(SearchRequest(image=query.path, k=6),
                          DicomvecOptions(serve_flags(sink)))
    browser.get(server.base)
    _wait(browser, "#archive figure.card")
    assert len(_css(browser, "#archive figure.card")) == len(stored) + 1
    _shot(browser, shots, "home", kind)
    form = _one(browser, "#upload-form")
    form.find_element(_by("ID"), "dicom").send_keys(query.path)
    k = form.find_element(_by("NAME"), "k")
    k.clear()
    k.send_keys("6")
    _navigate(browser, form.find_element(_by("ID"), "upload-submit"))
    _wait(browser, "#results figure.card")
    ids = _result_ids(browser)
    assert ids == [r.hit.ImageID for r in expected.results]
    assert ids[0] == query.image_id
    first = _css(browser, "#results figure.card")[0]
    assert first.find_element(_by("CSS_SELECTOR"), ".score").text == "1.0000"
    assert "uploaded" in _one(browser, "#query").text
    assert _images_loaded(browser, "#results img")
    _shot(browser, shots, "upload-results", kind)


def test_open_a_result_then_more_like_this(browser, served, shots):
    server, sink, stored, kind = served
    query = next(s for s in stored if s.impression)
    browser.get(f"{server.base}search?like={query.image_id}&k=4")
    _wait(browser, "#results figure.card")
    assert _result_ids(browser)[0] == query.image_id
    # the card shows the study's IMPRESSION
    assert impression_of(query.study) in _css(browser, "#results figure.card")[0].text
    second = _css(browser, "#results figure.card")[1]
    second_id = second.get_attribute("data-image-id")
    _navigate(browser, second.find_element(_by("CSS_SELECTOR"), "a.open"))
    _wait(browser, "#detail")
    assert _one(browser, "#image-id").text == second_id
    other = next(s for s in stored if s.image_id == second_id)
    report = _one(browser, "#report").text
    if other.impression:
        assert impression_of(other.study) in report
        assert f"Findings of study {other.study}." in report
    else:
        assert f"no report stored for study {other.study}" in report
    assert "Transfer syntax" in _one(browser, "#header").text
    assert second_id not in _result_ids(browser, "#neighbours")
    assert _images_loaded(browser, "#detail img.large")
    _shot(browser, shots, "detail", kind)
    _navigate(browser, _one(browser, "#like"))
    _wait(browser, "#results figure.card")
    ids = _result_ids(browser)
    assert ids[0] == second_id
    expected = run_search(SearchRequest(image=other.path, k=10),
                          DicomvecOptions(serve_flags(sink)))
    assert ids == [r.hit.ImageID for r in expected.results]
    _shot(browser, shots, "more-like-this", kind)
    # "more like this" on a result card
    third = _css(browser, "#results figure.card")[2]
    third_id = third.get_attribute("data-image-id")
    _navigate(browser, third.find_element(_by("CSS_SELECTOR"), "a.like"))
    _wait(browser, "#results figure.card")
    assert _result_ids(browser)[0] == third_id


def test_view_filter_in_the_form(browser, served):
    server, sink, stored, kind = served
    from selenium.webdriver.support.ui import Select
    view = stored[0].view
    browser.get(f"{server.base}search?like={stored[1].image_id}")
    _wait(browser, "#results")
    Select(_one(browser, "#upload-form select[name=view]")).select_by_value(view)
    _one(browser, "#upload-form").find_element(_by("ID"), "dicom").send_keys(stored[1].path)
    _navigate(browser, _one(browser, "#upload-submit"))
    _wait(browser, "#meta")
    assert set(_result_ids(browser)) == {s.image_id for s in stored if s.view == view}


def test_thumbnail_text_query_is_refused(browser, served, shots):
    server, sink, stored, kind = served
    browser.get(server.base)
    _wait(browser, "#text-form")
    assert not _one(browser, "#text").is_enabled()
    assert not _one(browser, "#text-submit").is_enabled()
    assert "text search needs a semantic model" in _one(browser, "#text-why").text
    browser.get(f"{server.base}search?text=right+lower+lobe+consolidation")
    error = _wait(browser, "#error").text
    assert error.startswith("text search needs a semantic model: the 'thumbnail' provider")
    _shot(browser, shots, "text-refused", kind)


def test_missing_file_shows_a_placeholder(browser, served, shots):
    server, sink, stored, kind = served
    browser.get(f"{server.base}image/{MISSING_ID}")
    _wait(browser, "#detail")
    assert "the file cannot be read" in _one(browser, "#unreadable").text
    assert _images_loaded(browser, "#detail img.large")  # the grey placeholder, not a 500
    _shot(browser, shots, "missing-file", kind)


def test_token_in_the_browser(browser, tmp_path):
    """--require-token: the printed URL opens the page (the token becomes a cookie); a browser
    without it is refused."""
    sink = f"sqlite:///{tmp_path}/db.sqlite"
    stored = fill_archive(tmp_path, sink, count=3)
    guarded = Server(["--require-token", *serve_flags(sink)])
    try:
        assert guarded.token
        browser.get(guarded.url)
        _wait(browser, "#archive")
        assert "token" not in browser.current_url
        browser.get(f"{guarded.base}image/{stored[0].image_id}")
        _wait(browser, "#detail")
        browser.delete_all_cookies()
        browser.get(guarded.base)
        assert "needs its token" in _wait(browser, "#error").text
    finally:
        guarded.stop()


def test_serve_off_loopback_requires_the_printed_token(tmp_path):
    """Bound to 0.0.0.0 the command prints a token; requests without it (or with another) are
    refused, with it they are served; an oversized upload is refused over real HTTP."""
    stored = fill_archive(tmp_path, f"sqlite:///{tmp_path}/db.sqlite", count=3)
    server = Server(["--host", "0.0.0.0", "--max-upload-mb", "0.05",
                     *serve_flags(f"sqlite:///{tmp_path}/db.sqlite")])
    try:
        assert server.token and len(server.token) >= 24
        assert "the token is required" in server.banner
        assert requests.get(server.local(), timeout=10).status_code == 401
        assert requests.get(server.local("?token=nope"), timeout=10).status_code == 403
        auth = {"Authorization": f"Bearer {server.token}"}
        page = requests.get(server.local(f"image/{stored[0].image_id}"), headers=auth,
                            timeout=30)
        assert page.status_code == 200 and stored[0].image_id in page.text
        with open(stored[0].path, "rb") as f:
            big = requests.post(server.local("search"), headers=auth, timeout=30,
                                files={"dicom": ("big.dcm", f.read() + b"\0" * 60_000)})
        assert big.status_code == 413
    finally:
        server.stop()


def test_serve_on_a_missing_store_is_one_line(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "dicomvec.cli", "serve", "--port", "0",
                          "--sink", f"sqlite:///{tmp_path}/none.db"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("dicomvec: error:") and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "none.db").exists()


def test_chromium_install_script_is_idempotent():
    script = Path(__file__).resolve().parents[1] / "scripts" / "chromium" / "install.sh"
    if not (os.path.exists(BROWSER) and os.path.exists(DRIVER)):
        pytest.skip("chromium not installed")
    import subprocess
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "/usr/bin/chromium"
    assert out.stderr == ""  # nothing installed again
    assert shutil.which("chromedriver") or os.path.exists(DRIVER)
