"""The demo page driven in headless Chromium: upload an image, press Segment, wait for the
overlay, read the legend, save a screenshot. ``tests/test_serve.py`` checks the page with
``segment_in_browser``; run as a module it takes the README's screenshot of a trained
model's page::

    python -m experiments.serve_screenshot --checkpoint workdirs/quickstart \\
        --out experiments/figures/serve_demo.png

Needs the ``serve`` extra, selenium, and Chromium with its driver from the system's
packages (``apt-get install chromium chromium-driver``, as ``.ci/run`` does).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import socket
import tempfile

BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1000")


def chromium() -> tuple[str, str] | None:
    """(browser, driver) executables when both are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def segment_in_browser(url: str, image: str | os.PathLike, profile: str | os.PathLike,
                       screenshot: str | os.PathLike | None = None,
                       timeout_s: float = 90) -> list[str]:
    """Opens the page at ``url``, uploads ``image``, presses Segment and waits for the
    overlay, the legend and the timing; returns the class names the legend shows, after
    saving a screenshot of the page to ``screenshot`` when given."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    found = chromium()
    if found is None:
        raise RuntimeError("Chromium and chromedriver are not installed "
                           "(apt-get install chromium chromium-driver)")
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout_s)
        upload = wait.until(ec.presence_of_element_located(
            (By.CSS_SELECTOR, "#segformer-input input[type=file]")))
        upload.send_keys(str(pathlib.Path(image).resolve()))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#segformer-input img")))
        driver.find_element(By.CSS_SELECTOR, "#segformer-run").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#segformer-overlay img")))
        cells = wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#segformer-legend .legend-name"))
        names = [c.text for c in cells]
        wait.until(
            lambda d: "inference" in d.find_element(By.CSS_SELECTOR, "#segformer-timing").text)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        return names
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.serve_screenshot",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="any checkpoint predict loads")
    p.add_argument("--out", required=True, help="the screenshot (PNG)")
    p.add_argument("--image", default=None,
                   help="the image to upload (default: the page's first example)")
    p.add_argument("--size", type=int, default=128, help="the page's --size (default 128)")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from segformer_jax import serve
    with tempfile.TemporaryDirectory() as work:
        page = serve.Page(args.checkpoint, size=args.size, workdir=work)
        image = args.image or serve.example_images(pathlib.Path(work))[0]
        page.segment(image)  # compiles for the image's size: the page then shows a warm call
        blocks = serve.build(page)
        port = free_port()
        blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                      quiet=True)
        try:
            names = segment_in_browser(f"http://127.0.0.1:{port}/", image,
                                       pathlib.Path(work) / "profile", args.out)
        finally:
            blocks.close()
    print(f"legend: {', '.join(names)}; screenshot {args.out}")


if __name__ == "__main__":
    main()
