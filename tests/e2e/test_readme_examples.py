"""Every example of README.md's API section, extracted from README.md itself and run against the server:
only the base URL is rewritten (http://127.0.0.1:7860 -> ASAG_E2E_URL). The examples ask for 512 px and 25
steps, ~15 min each on a 2-core CPU, so by default the harness also sends width/height 128 and 2 steps
(added to the request body, nothing else changed); ASAG_E2E_EXAMPLES_AS_WRITTEN=1 runs them unchanged."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:7860"
AS_WRITTEN = os.environ.get("ASAG_E2E_EXAMPLES_AS_WRITTEN") == "1"
SHRINK = {"width": 128, "height": 128, "steps": 2}


def api_examples() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("### API"):]
    section = section[:section.index("\n## ")]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, re.S)
    return [(lang, code) for lang, code in blocks if "sdapi" in code]


def test_the_api_section_has_a_curl_and_a_python_example():
    langs = [lang for lang, _ in api_examples()]
    assert "bash" in langs and "python" in langs
    assert all(README_URL in code for _, code in api_examples())


def _run(lang: str, code: str, url: str, cwd: Path) -> subprocess.CompletedProcess:
    code = code.replace(README_URL, url.rstrip("/"))
    if lang == "bash":
        if not AS_WRITTEN:
            def shrink(m):
                body = json.loads(m.group(1))
                return "-d '" + json.dumps({**body, **SHRINK}) + "'"
            code = re.sub(r"-d '(\{.*?\})'", shrink, code, flags=re.S)
        return subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, capture_output=True, text=True,
                              timeout=3600)
    prelude = "" if AS_WRITTEN else (
        "import requests as _requests\n_post = _requests.post\n"
        f"_requests.post = lambda url, json=None, **kw: _post(url, json={{**json, **{SHRINK!r}}}, **kw)\n")
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, capture_output=True, text=True,
                          timeout=3600)


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_readme_api_example(webui, unet, api, index, tmp_path):
    """The examples name UNet layers ("middle", "middle, output.3-5"): the README runs them on SD1.x / SD2.x / SDXL."""
    lang, code = api_examples()[index]
    run = _run(lang, code, webui.url, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    layers = re.search(r'"layers":\s*"([^"]*)"', code)
    args = re.search(r'"args":\s*\[(.*?)\]\}', code, re.S)
    if lang == "bash":
        infotext = run.stdout
    else:
        png = tmp_path / "asag.png"
        assert png.is_file(), "the example did not write asag.png"
        import base64
        info = webui.post("/sdapi/v1/png-info", {"image": base64.b64encode(png.read_bytes()).decode()})
        infotext = info.body["info"]
    params = api.parse_infotext(infotext)
    assert "ASAG error" not in params, params["ASAG error"]
    scale = re.search(r'"scale":\s*([\d.]+)', code) or re.search(r"\[true,\s*([\d.]+)", code)
    assert params.get("ASAG scale") == scale.group(1), (infotext, args and args.group(1))
    if layers:
        assert params.get("ASAG layers") == layers.group(1)
    if '"adaptive"' in code:
        assert params.get("ASAG adaptive") == re.search(r'"adaptive":\s*"(\w+)"', code).group(1)
