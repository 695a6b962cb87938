"""`fusc review`: the review page on a real workdir (real scans, LanceDB), its server in a
thread, clicked through in a real headless browser (Debian's chromium through chromedriver)."""

from __future__ import annotations

import csv
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import CliRunner

from fusc_lib.cli import app as cli
from fusc_lib.export import export_table
from fusc_lib.review import history
from fusc_lib.store import Workdir
from jobs.review import Review
from schemas.tables import SCANS
from services.review_app import build_app, listen, server
from tests.archive_run import SETS, copy_of

REVIEWER = "Dr. Amsel"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def workdir(labelled_run, tmp_path_factory, data_dir) -> Workdir:
    """A copy of the shared `fusc run` workdir, each scan given the view name of its label
    file as the typed name OCR would have read (so clusters have suggested names)."""
    store = copy_of(labelled_run[0], tmp_path_factory.mktemp("review") / "w")
    views = {}
    for name in SETS:
        views.update({r["file"]: r["view"] for r in csv.DictReader(open(data_dir / name /
                                                                         "labels.csv"))})
    scans = store.scans(["image_id", "source_uri"])
    for image_id, uri in zip(scans["image_id"].to_pylist(), scans["source_uri"].to_pylist()):
        if Path(uri).name in views:
            store.table(SCANS).update(where=f"image_id = '{image_id}'",
                                      values={"pseudo_view": views[Path(uri).name]})
    return store


@contextmanager
def running(app):
    """The app served by uvicorn in a thread, on a free port; yields its URL."""
    sock = listen("127.0.0.1", 0)
    uvicorn_server = server(app)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uvicorn_server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        uvicorn_server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def url(workdir):
    with running(build_app(workdir)) as address:
        yield address


def wait(browser, condition, timeout: float = 15):
    """Until `condition(browser)` is true (elements re-rendered meanwhile are looked up again)."""
    def holds(driver):
        try:
            return condition(driver)
        except Exception:  # an element replaced between finding and reading it
            return False
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(holds)


def card(browser, cluster: int):
    return browser.find_element(By.CSS_SELECTOR, f"article.cluster[data-cluster='{cluster}']")


def card_name(browser, cluster: int) -> str:
    return card(browser, cluster).find_element(By.CSS_SELECTOR, ".name").text


def scan(browser, image_id: str):
    return browser.find_element(By.CSS_SELECTOR, f"figure.scan[data-image='{image_id}']")


def scan_label(browser, image_id: str) -> str:
    return scan(browser, image_id).find_element(By.CSS_SELECTOR, ".label").text


def type_and_submit(element, field: str, text: str) -> None:
    element.find_element(By.CSS_SELECTOR, f".{field}-input").send_keys(text)
    element.find_element(By.CSS_SELECTOR, f".{field}-button").click()


def severe(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(browser, address: str) -> None:
    browser.get(address)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article.cluster"))


def thumbnails_shown(browser) -> bool:
    images = browser.find_elements(By.CSS_SELECTOR, ".montage img")
    return bool(images) and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0
                                for i in images)


def test_clicks_name_merge_move_exclude_and_a_reload_shows_them(workdir, url, browser):
    review = Review(workdir)
    sizes = {c.cluster_id: c.size for c in review.overview()}
    checked = max(review.suggested, key=lambda c: sizes[c])  # its scans: moved, excluded
    named, merged_a, merged_b = [c for c in sizes if c != checked]
    open_page(browser, url)
    assert severe(browser) == []
    wait(browser, thumbnails_shown)
    assert not browser.find_element(By.ID, "token-form").is_displayed()  # no token needed
    browser.find_element(By.ID, "reviewer").send_keys(REVIEWER)

    type_and_submit(card(browser, named), "name", "4CH")
    wait(browser, lambda d: card_name(d, named) == "4CH")
    for cluster in (merged_a, merged_b):
        card(browser, cluster).find_element(By.CSS_SELECTOR, ".select").click()
    browser.find_element(By.ID, "merge-name").send_keys("abdomen")
    browser.find_element(By.ID, "merge").click()
    wait(browser, lambda d: card_name(d, merged_a) == card_name(d, merged_b) == "abdomen")
    card(browser, merged_a).find_element(By.CSS_SELECTOR, ".mixed-toggle").click()
    wait(browser, lambda d: card(d, merged_a).find_elements(By.CSS_SELECTOR, ".badge"))
    suggestion = review.suggested[checked][0]
    card(browser, checked).find_element(By.CSS_SELECTOR, ".accept").click()
    wait(browser, lambda d: card_name(d, checked) == suggestion)

    card(browser, checked).find_element(By.CSS_SELECTOR, ".open-scans").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.scan")) ==
         sizes[checked])
    shown = [s.get_attribute("data-image") for s in
             browser.find_elements(By.CSS_SELECTOR, "figure.scan")]
    assert shown == [s.image_id for s in review.strays(checked, 0, 48)]  # most likely first
    stray, blank, undone = shown[:3]
    type_and_submit(scan(browser, stray), "move", "4CH")
    wait(browser, lambda d: scan_label(d, stray) == "moved to 4CH")
    scan(browser, blank).find_element(By.CSS_SELECTOR, ".exclude").click()
    wait(browser, lambda d: scan_label(d, blank) == "excluded")
    scan(browser, undone).find_element(By.CSS_SELECTOR, ".exclude").click()
    wait(browser, lambda d: scan_label(d, undone) == "excluded")
    scan(browser, undone).find_element(By.CSS_SELECTOR, ".restore").click()
    wait(browser, lambda d: scan_label(d, undone) == suggestion)

    browser.refresh()
    wait(browser, lambda d: card_name(d, named) == "4CH")
    assert card_name(browser, merged_a) == card_name(browser, merged_b) == "abdomen"
    assert card_name(browser, checked) == suggestion
    assert "mixed" in card(browser, merged_a).text
    assert browser.find_element(By.ID, "reviewer").get_attribute("value") == REVIEWER
    card(browser, checked).find_element(By.CSS_SELECTOR, ".open-scans").click()
    wait(browser, lambda d: scan_label(d, stray) == "moved to 4CH")
    assert scan_label(browser, blank) == "excluded" and scan_label(browser, undone) == suggestion
    assert severe(browser) == []

    exported = export_table(workdir).to_pylist()
    label = {row["image_id"]: (row["label"], row["label_source"]) for row in exported}
    assert label[stray] == ("4CH", "moved") and label[blank] == (None, "excluded")
    assert label[undone] == (suggestion, "cluster")
    for row in exported:
        if row["cluster_id"] == named:
            assert label[row["image_id"]] == ("4CH", "cluster")
        if row["cluster_id"] in (merged_a, merged_b):
            assert label[row["image_id"]] == ("abdomen", "cluster")
    assert set(history(workdir).column("reviewer").to_pylist()) == {REVIEWER}


def test_a_name_is_shown_as_text_never_run(workdir, url, browser):
    payload = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\">"
    open_page(browser, url)
    type_and_submit(card(browser, 0), "name", payload)
    wait(browser, lambda d: card_name(d, 0) == payload)
    browser.refresh()
    wait(browser, lambda d: card_name(d, 0) == payload)
    card(browser, 0).find_element(By.CSS_SELECTOR, ".open-scans").click()
    wait(browser, lambda d: d.find_element(By.ID, "scans-title").text.endswith(" scans"))
    assert payload in browser.find_element(By.ID, "scans-title").text
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert not browser.find_elements(By.CSS_SELECTOR, "#clusters script, #clusters img[src=x]")
    assert severe(browser) == []


def test_two_reviewers_saving_at_once_lose_nothing(workdir, url):
    version = Review(workdir).version
    before = history(workdir, version).num_rows
    start = threading.Barrier(2)

    def reviewer(who: str) -> None:
        session = requests.Session()
        start.wait()
        for i in range(20):
            response = session.post(url + "api/decisions", json={
                "version": version, "reviewer": who,
                "decisions": [{"action": "mixed" if i % 2 else "unmixed", "cluster_id": i % 4}]})
            assert response.status_code == 200, response.text

    threads = [threading.Thread(target=reviewer, args=(who,)) for who in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = history(workdir, version)
    assert made.num_rows == before + 40
    reviewers = made.column("reviewer").to_pylist()
    assert reviewers.count("alice") == reviewers.count("bob") == 20


def test_the_api_says_why_it_refuses_and_thumbnails_are_made_once(workdir, url):
    review = Review(workdir)

    def post(*decisions: dict) -> requests.Response:
        return requests.post(url + "api/decisions", json={"decisions": list(decisions)})

    refused = {
        "clusters 0–3, not 9": post({"action": "name", "cluster_id": 9, "name": "x"}),
        "at most 200 characters": post({"action": "name", "cluster_id": 1, "name": "x" * 201}),
        "assigned no scan": post({"action": "exclude", "image_id": "not-a-scan"}),
        "give the name": post({"action": "move", "image_id": review.image_ids[0]}),
        "Input should be 'name'": post({"action": "delete", "cluster_id": 1}),
    }
    for reason, response in refused.items():
        assert response.status_code in (400, 422) and reason in response.text, response.text
    assert requests.get(url + "api/clusters/4/scans").status_code == 400
    assert requests.get(url + "api/clusters?offset=-1").status_code == 422
    assert requests.get(url + "api/clusters?version=..%2Fx").status_code == 404
    page = requests.get(url + "api/clusters?offset=2&limit=1").json()
    assert page["total"] == 4 and [c["cluster_id"] for c in page["clusters"]] == [2]

    image_id = review.image_ids[-1]
    thumb = requests.get(f"{url}thumbs/{image_id}.jpg")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG
    assert "immutable" in thumb.headers["Cache-Control"]
    cached = Path(workdir.root, "reports", "thumbs", "128", image_id[:2], f"{image_id}.jpg")
    assert cached.read_bytes() == thumb.content
    assert requests.get(f"{url}thumbs/..%2Fmodels.jpg").status_code == 404
    assert requests.get(url + "api/clusters",  # a site resolving to 127.0.0.1: DNS rebinding
                        headers={"Host": "rebind.example"}).status_code == 400
    assert requests.post(url + "api/decisions", data='{"decisions": []}',  # a form's body
                         headers={"Content-Type": "text/plain"}).status_code == 422
    page = requests.get(url)
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert "://" not in page.text  # nothing fetched from elsewhere


def test_with_a_token_the_api_needs_it_and_the_page_carries_it(workdir, browser):
    image_id = Review(workdir).image_ids[0]
    with running(build_app(workdir, token=TOKEN)) as address:
        assert requests.get(address + "api/clusters").status_code == 401
        assert requests.get(f"{address}thumbs/{image_id}.jpg").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.get(address + "api/clusters", headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(address + "api/clusters", headers=right).status_code == 200
        open_page(browser, f"{address}?token={TOKEN}")
        wait(browser, thumbnails_shown)
        assert "token" not in browser.current_url  # off the address bar
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        browser.refresh()  # the tab keeps it
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article.cluster"))
        assert severe(browser) == []


def test_the_command_refuses_an_open_host_without_a_token_and_a_taken_port(workdir):
    runner = CliRunner()
    result = runner.invoke(cli, ["review", "--workdir", workdir.root, "--host", "0.0.0.0"],
                           env={"FUSC_API_TOKEN": ""})
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0" in result.output
    taken = listen("127.0.0.1", 0)
    port = str(taken.getsockname()[1])
    taken.listen()
    result = runner.invoke(cli, ["review", "--workdir", workdir.root, "--port", port])
    taken.close()
    assert result.exit_code == 2 and "cannot listen" in result.output
