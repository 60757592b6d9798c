"""The README's screenshot of `dicomvec serve`: run from the folder `./run_local.sh` ran in
(its out/ sample and store), e.g. ``python -m tests.serve_screenshot docs/img/serve.png``.
Serves out/dicomvec.db, uploads the sample's first good DICOM (k=8) in headless chromium and
saves the results page."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from tests.serve_fixtures import Server


def main(target: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_serve_browser import BROWSER, DRIVER, FLAGS
    with open("out/sample/synthetic-manifest.csv", newline="") as f:
        query = next(row for row in csv.DictReader(f) if not row.get("broken"))
    server = Server(["--sink", "sqlite:///out/dicomvec.db", "--provider", "thumbnail"],
                    cwd=Path.cwd())
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in FLAGS:
        options.add_argument(flag.replace("1400,1000", "1280,1060"))
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        driver.get(server.base)
        form = driver.find_element(By.ID, "upload-form")
        form.find_element(By.ID, "dicom").send_keys(str(Path(list(query.values())[0]).resolve()))
        k = form.find_element(By.NAME, "k")
        k.clear()
        k.send_keys("8")
        form.find_element(By.ID, "upload-submit").click()
        WebDriverWait(driver, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "#results figure.card")))
        driver.save_screenshot(target)
    finally:
        driver.quit()
        server.stop()
    print(target)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "serve.png")
