"""The Hugging Face Space configuration (README front matter) stays in sync with the project's pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with the Space's YAML front matter"
    return yaml.safe_load(match.group(1))


def pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?==([^\s#]+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_space_config_matches_the_pins():
    config = front_matter()
    assert config["sdk"] == "gradio" and config["sdk_version"] == pinned("gradio")
    assert config["app_file"] == "app.py" and (ROOT / config["app_file"]).is_file()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert requires == f">={config['python_version']}"
    assert config["hf_oauth"] is True and config["license"] == "apache-2.0"
    assert config["suggested_storage"] in {"small", "medium", "large"}
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+", repo) for repo in config["models"])


def test_readme_still_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = re.sub(r"^---\n.*?\n---\n", "", text, count=1, flags=re.S).lstrip()
    first_block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    assert body.index("```bash") < 200  # right under the title
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "run"], ["make", "test"]]
