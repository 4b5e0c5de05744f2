"""Open a `tsgb explain` index page in headless Chromium and check that every picture loads.

    python tools/render_check.py OUT_DIR/index.html [--screenshot page.png]

A copy of the page with a small script is written next to it (removed afterwards); after
the page's load event the script records, per <img>, whether it decoded (`complete` and a
non-zero `naturalWidth`). Chromium's `--dump-dom` prints the result. Exit status 0: every
picture loaded; 1: some did not (or the page has none); 2: the check itself failed (Chromium
crashed, timed out or the page never reported); 3: no Chromium found (chromium,
chromium-browser, chromium-headless-shell, google-chrome), e.g. `apt-get install chromium`.

Chromium runs offline-safe (no background networking, component updates, sync or QUIC), with
no sandbox (it runs as root in containers) and a fresh throw-away profile.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--allow-file-access-from-files",
    "--virtual-time-budget=5000",
)
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  var out = document.createElement("pre");
  out.id = "tsgb-render-check";
  out.textContent = "TSGB_IMAGES " + imgs.length + " LOADED " + (imgs.length - bad.length) +
    " BROKEN " + bad.map(function (im) {
      return (im.getAttribute("src") || "(no src)").slice(0, 80).replace(/[|<]/g, "_");
    }).join("|");
  document.body.appendChild(out);
});
</script>"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def check(
    index: Path, browser: str, screenshot: Path | None = None, timeout: float = 60
) -> tuple[int, int, list[str]]:
    """(images, loaded, broken srcs) of the page as Chromium renders it."""
    text = index.read_text(encoding="utf-8")
    probe = index.with_name(f".render_check_{index.stem}.html")
    probed = (
        text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE
    )  # the end tag is optional in HTML
    probe.write_text(probed, encoding="utf-8")
    flags = list(FLAGS)
    try:
        with tempfile.TemporaryDirectory(prefix="tsgb_chromium_") as profile:
            flags.append(f"--user-data-dir={profile}")
            proc = subprocess.run(
                [browser, *flags, "--dump-dom", probe.resolve().as_uri()],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if screenshot is not None:
                subprocess.run(
                    [
                        browser,
                        *flags,
                        "--window-size=1100,900",
                        "--hide-scrollbars",
                        f"--screenshot={screenshot.resolve()}",
                        index.resolve().as_uri(),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r"TSGB_IMAGES (\d+) LOADED (\d+) BROKEN ([^<]*)", proc.stdout)
    if not found:
        said = [
            line
            for line in (proc.stderr + proc.stdout).splitlines()
            if line.strip() and "dbus" not in line.lower()
        ]  # headless dbus noise
        raise RuntimeError(
            f"the page did not report its images (Chromium exit "
            f"{proc.returncode}): {' / '.join(said[-5:])[-600:] or 'no output'}"
        )
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
    try:
        total, loaded, broken = check(args.index, browser, args.screenshot)
    except subprocess.TimeoutExpired as e:
        print(
            f"render_check: {Path(browser).name} timed out after {e.timeout:.0f} s", file=sys.stderr
        )
        return 2
    except (RuntimeError, OSError) as e:
        print(f"render_check: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.index}: {loaded}/{total} images loaded in {Path(browser).name}"
        + (f"; broken: {', '.join(broken)}" if broken else "")
    )
    return 0 if total and loaded == total else 1


if __name__ == "__main__":
    sys.exit(main())
