"""Shared fixtures: the real images of ../shared/data and one local Ray for the whole suite."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported anywhere
# Ray Train's preemption watcher (one more actor process per training run) only acts when a node
# of a cluster is drained; a local test Ray never is. The `fusc` subprocesses inherit this.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    if not DATA.is_dir():
        raise pytest.UsageError(f"tests need the real images in {DATA} (../shared/data)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting Ray costs seconds)."""
    import ray

    from jobs.ray_runtime import connect

    connect(None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory, data_dir, ray_session):
    """(Workdir after `fusc run` on a small three-hospital archive, its label file): see
    tests/archive_run.py. Shared: a test that changes it works on `archive_run.copy_of`."""
    from tests.archive_run import labelled_run as build

    return build(data_dir, tmp_path_factory.mktemp("labelled-run"))


@pytest.fixture(scope="session")
def browser():
    """One headless chromium (Debian's, through its chromedriver) for every page test, with
    the browser console log kept (`browser.get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--window-size=1400,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()
