"""Headless Chromium from Debian, driven through Selenium and Debian's chromedriver.

No browser is downloaded at run time: the binaries are Debian's (``chromium``,
``chromium-driver``; tools/bootstrap.sh installs them) and Selenium Manager is kept offline.
The flags keep Chromium from reaching out to the internet (this machine has none) and let it
run as root.
"""

from __future__ import annotations

import os
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--window-size=1400,900",
)


class BrowserMissing(RuntimeError):
    pass


def chromium() -> webdriver.Chrome:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not shutil.which(path):
            raise BrowserMissing(
                f"{path} is missing: run tools/bootstrap.sh as root (apt-get install {package})"
            )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
