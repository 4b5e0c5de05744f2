"""Open a `tsgb explain` index page in headless Chromium and check that every picture loads.

    python tools/render_check.py OUT_DIR/index.html [--screenshot page.png]

A copy of the page with a small script is written next to it (removed afterwards); after
the page's load event the script records, per <img>, whether it decoded (`complete` and a
non-zero `naturalWidth`). Chromium's `--dump-dom` prints the result. Exit status 0: every
picture loaded; 1: some did not; 3: no Chromium found (chromium, chromium-browser,
chromium-headless-shell, google-chrome), e.g. `apt-get install chromium-headless-shell`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  var out = document.createElement("pre");
  out.id = "tsgb-render-check";
  out.textContent = "TSGB_IMAGES " + imgs.length + " LOADED " + (imgs.length - bad.length) +
    " BROKEN " + bad.map(function (im) { return im.getAttribute("src").slice(0, 80); }).join("|");
  document.body.appendChild(out);
});
</script>"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check(index: Path, browser: str, screenshot: Path | None = None,
          timeout: float = 60) -> tuple[int, int, list[str]]:
    """(images, loaded, broken srcs) of the page as Chromium renders it."""
    text = index.read_text(encoding="utf-8")
    probe = index.with_name(f".render_check_{index.stem}.html")
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
             "--virtual-time-budget=5000"]
    try:
        with tempfile.TemporaryDirectory(prefix="tsgb_chromium_") as profile:
            flags.append(f"--user-data-dir={profile}")
            proc = subprocess.run([browser, *flags, "--dump-dom", probe.resolve().as_uri()],
                                  capture_output=True, text=True, timeout=timeout)
            if screenshot is not None:
                subprocess.run([browser, *flags, "--window-size=1100,900", "--hide-scrollbars",
                                f"--screenshot={screenshot.resolve()}", index.resolve().as_uri()],
                               capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r"TSGB_IMAGES (\d+) LOADED (\d+) BROKEN ([^<]*)", proc.stdout)
    if not found:
        raise RuntimeError(f"the page did not report its images; Chromium said: "
                           f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    broken = [s for s in found.group(3).strip().split("|") if s]
    return int(found.group(1)), int(found.group(2)), broken


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("index", type=Path, help="index.html written by tsgb explain --out-dir")
    p.add_argument("--screenshot", type=Path, default=None, help="also save a PNG of the page")
    args = p.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("render_check: no Chromium found; skipped", file=sys.stderr)
        return 3
    total, loaded, broken = check(args.index, browser, args.screenshot)
    print(f"{args.index}: {loaded}/{total} images loaded in {Path(browser).name}"
          + (f"; broken: {', '.join(broken)}" if broken else ""))
    return 0 if total and loaded == total else 1


if __name__ == "__main__":
    sys.exit(main())
